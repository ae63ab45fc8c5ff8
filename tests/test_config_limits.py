"""config.json and secrets.json far too large, or nested far too deeply: the device (the firmware
under MicroPython with a small heap, as on the ESP32) goes to safe mode and says why in words, and
`make config` refuses in words; neither shows a traceback (before: MemoryError on the device,
RecursionError in the host validator)."""
import json
import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

import config
import sim_env

ROOT = sim_env.ROOT

BAD = {
    "300 KB": ('{"device_name": "%s"}' % ("x" * 300000), "far too large for a configuration file"),
    "nested 3000 deep": ("[" * 3000 + "]" * 3000, "nested more than 4 deep"),
    "nested 3000 deep in a setting": ('{"mqtt": {"port": %s}}' % ("[" * 3000 + "]" * 3000),
                                      "nested more than 4 deep"),
    "100000 brackets": ("[" * 100000, "far too large for a configuration file"),
}


def unix_config(uart):
    return {"mqtt": {"host": "127.0.0.1", "port": 1883}, "uart": {"device": uart}}


def run_firmware(workdir, heapsize="128K"):
    p = sim_env.start_firmware(str(workdir), heapsize=heapsize)
    out, _ = p.communicate(timeout=60)
    return p.returncode, out.decode(errors="replace")


def test_the_device_goes_to_safe_mode_with_a_message(tmp_path):
    for name, (text, words) in BAD.items():
        for target in ("config.json", "secrets.json"):
            wd = tmp_path / ("%s-%s" % (name.replace(" ", "_"), target))
            wd.mkdir()
            (wd / "config.json").write_text(json.dumps(unix_config(str(wd / "no-uart"))))
            (wd / target).write_text(text)
            status, out = run_firmware(wd)
            assert status == 2, (name, target, out)
            assert "SAFE MODE" in out and "%s: " % target in out and words in out, (name, target, out)
            assert "Traceback" not in out and "MemoryError" not in out, (name, target, out)


def test_make_config_refuses_with_a_message(tmp_path):
    fw = tmp_path / "firmware"
    fw.mkdir()
    for f in ("config.py",):
        (fw / f).write_text(open(os.path.join(sim_env.FIRMWARE, f)).read())
    good = {"wifi": {"ssid": "home"}, "mqtt": {"host": "192.168.1.10"}}
    for name, (text, words) in BAD.items():
        for target in ("config.json", "secrets.json"):
            (fw / "config.json").write_text(json.dumps(good))
            (fw / "secrets.json").write_text("{}")
            (fw / target).write_text(text)
            r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "flash.py"), "config",
                                "--port", str(tmp_path / "no-device"), "--firmware-dir", str(fw)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 1, (name, target, r.stdout + r.stderr)
            assert "cannot be used (nothing was sent to the device)" in r.stderr and words in r.stderr
            assert "Traceback" not in r.stdout + r.stderr, (name, target, r.stderr)


def _json_values():
    leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    return st.recursive(leaf, lambda kids: st.lists(kids, max_size=4) |
                        st.dictionaries(st.text(max_size=10), kids, max_size=4), max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(value=_json_values(), depth=st.integers(0, 5000), opener=st.sampled_from(["[", '{"a":']),
       raw=st.binary(max_size=300), pick=st.integers(0, 2))
def test_any_file_gives_a_configuration_or_messages_never_an_exception(tmp_path_factory, value, depth,
                                                                        opener, raw, pick):
    d = tmp_path_factory.mktemp("cfg")
    path = str(d / "config.json")
    nested = opener * depth + "1" + ("]" if opener == "[" else "}") * depth
    data = [json.dumps({"mqtt": value}).encode(), nested.encode(), raw][pick]
    with open(path, "wb") as f:
        f.write(data)
    cfg, errors = config.load_file(path, path)
    assert isinstance(errors, list) and all(isinstance(e, str) and e for e in errors)
    assert errors or isinstance(cfg, dict)
