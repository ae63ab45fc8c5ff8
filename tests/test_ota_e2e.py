"""Updates over the air, end to end: the app `make deploy` installed on the simulated board (the
unix port behind the simulated ESP32; a process restart is a reboot), a real mosquitto, the real
tools/ota.py as the user runs it, and a paho client in the role of Home Assistant that reads the
update entity and presses Install."""
import hashlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import time

import pytest

import sim_env
from test_flash import (board_flash, fwdir, run, set_version, sims, write_config)  # noqa: F401 (fixtures)

ROOT = sim_env.ROOT
BASE = "vue_utility/sim0001"
NODE = "vue_utility_sim0001"
OTA_TOOL = os.path.join(ROOT, "tools", "ota.py")


def _tool():
    # Loaded under its own name: firmware/ota.py is `ota` on the tests' path.
    spec = importlib.util.spec_from_file_location("ota_tool", OTA_TOOL)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


class Device:
    def __init__(self, sim, meter, key, fw):
        self.sim, self.meter, self.key, self.fw = sim, meter, key, fw

    @property
    def fs(self):
        return self.sim.fsdir

    def pointer(self):
        with open(os.path.join(self.fs, "app.json")) as f:
            return json.load(f)

    def slot_files(self, slot):
        out = {}
        top = os.path.join(self.fs, slot)
        for d, _, names in os.walk(top):
            for n in names:
                p = os.path.join(d, n)
                with open(p, "rb") as f:
                    out[os.path.relpath(p, top)] = hashlib.sha256(f.read()).hexdigest()
        return out

    def data_files(self):
        out = {}
        for n in ("config.json", "secrets.json"):
            with open(os.path.join(self.fs, n), "rb") as f:
                out[n] = f.read()
        return out


@pytest.fixture
def device(run, sims, fwdir, mgm, broker, ha):
    """A board running version 1.0-old from app_a, with an OTA key shared with `fwdir` (the user's
    firmware folder); the watchdog at 5 s and probation at 6 s (debug.time_scale 50)."""
    meter = mgm(8)
    key = secrets.token_hex(32)
    write_config(fwdir, mqtt={"host": "127.0.0.1", "port": broker.port}, uart={"device": meter.path},
                 meter={"poll_interval_s": 5, "startup_delay_s": 0}, debug={"time_scale": 50})
    sec = json.loads((fwdir / "secrets.json").read_text())
    sec["ota"] = {"key": key}
    (fwdir / "secrets.json").write_text(json.dumps(sec))
    set_version(fwdir, "1.0-old")
    sim = sims(flash=board_flash(), in_rom=False)
    r = run("deploy", sim)
    assert r.returncode == 0, r.out
    sim.board.wait_console(rb"vue-utility 1.0-old on unix")
    sim.board.wait_console(rb"MQTT connected")
    ha.wait_topic(BASE + "/ota/device", lambda p: '"ota": true' in p, timeout=60)  # what make ota looks for
    return Device(sim, meter, key, fwdir)


def ota(fw, *args, timeout=240):
    r = subprocess.run([sys.executable, OTA_TOOL, "publish", "--firmware-dir", str(fw)] + list(args),
                       capture_output=True, text=True, timeout=timeout)
    r.out = r.stdout + r.stderr
    return r


def state(ha, pred, timeout=60, after=0):
    return json.loads(ha.wait_topic("/ota/state", lambda p: p and pred(json.loads(p)), timeout, after))


def device_info(ha, pred, timeout=60, after=0):
    return json.loads(ha.wait_topic("/ota/device", lambda p: p and pred(json.loads(p)), timeout, after))


def no_trouble(sim, since=0):
    c = bytes(sim.board.console[since:])
    for bad in (b"watchdog:", b"Traceback"):
        at = c.find(bad)
        assert at < 0, c[max(0, at - 1500):at + 1500].decode(errors="replace")


# ---- a good update -------------------------------------------------------------------------------
def test_a_good_update_from_home_assistant_then_from_make_ota(device, fwdir, ha):
    sim = device.sim
    data = device.data_files()
    # HA has the update entity: installed 1.0-old, nothing newer yet.
    cfg = json.loads(ha.wait_topic("homeassistant/update/%s/firmware/config" % NODE, lambda p: bool(p)))
    assert cfg["cmd_t"] == "~/cmd/update" and cfg["pl_inst"] == "install" and cfg["stat_t"] == "~/ota/state"
    announced = {t for t, p, r in ha.messages if t.endswith("/config") and p}
    s = state(ha, lambda s: s["installed_version"] == "1.0-old")
    assert s["latest_version"] == "1.0-old" and s["in_progress"] is False
    energy_before = int(ha.wait_topic(BASE + "/energy/in"))

    set_version(fwdir, "2.0-new")
    r = ota(fwdir, "--summary", "Faster readings")
    assert r.returncode == 0, r.out
    assert device.key not in r.out
    s = state(ha, lambda s: s["latest_version"] == "2.0-new")
    assert s["installed_version"] == "1.0-old" and s["release_summary"] == "Faster readings"

    mark, console = ha.mark(), len(sim.board.console)
    ha.publish(BASE + "/cmd/update", "install")  # HA's Install button
    state(ha, lambda s: s["installed_version"] == "2.0-new" and not s["in_progress"]
          and "probation" not in s["release_summary"], timeout=120, after=mark)
    progress = [json.loads(p) for t, p, r in ha.messages[mark:] if t == BASE + "/ota/state" and p]
    busy = [s["update_percentage"] for s in progress if s["in_progress"]]
    assert busy and busy == sorted(busy) and 0 <= busy[0] < 100, progress
    assert [p for p in busy if 0 < p < 100], progress  # it moves while the files come
    sim.board.wait_console(rb"boot: app 2.0-new from app_b", start=console)
    assert device.pointer() == {"active": "app_b"}  # confirmed: off probation
    # The previous app stays whole beside it; configuration and secrets untouched.
    with open(os.path.join(device.fs, "app_a", "manifest.json")) as f:
        assert json.load(f)["version"] == "1.0-old"
    assert device.data_files() == data
    # The same device and entities in HA: nothing announced that was not there before.
    again = {t for t, p, r in ha.messages[mark:] if t.endswith("/config") and p}
    assert again <= announced
    # Energy carries on from where it was (state.json and the retained record survive).
    after = ha.mark()
    assert int(ha.wait_topic(BASE + "/energy/in", after=after, timeout=30)) >= energy_before
    no_trouble(sim, console)

    # `make ota INSTALL=1` does the same from the user's computer and follows it to the end.
    set_version(fwdir, "3.0")
    r = ota(fwdir, "--install", "--timeout", "120")
    assert r.returncode == 0, r.out
    assert "runs version 3.0" in r.stdout
    assert device.pointer() == {"active": "app_a"}
    assert device.data_files() == data


# ---- updates that fail on the device roll back ---------------------------------------------------
def test_a_release_that_crashes_on_import_rolls_back_and_says_so(device, fwdir, ha):
    sim = device.sim
    before = device.slot_files("app_a")
    set_version(fwdir, "2.0-bad")
    with open(fwdir / "app.py", "a") as f:
        f.write('\nraise RuntimeError("this release is broken")\n')
    console = len(sim.board.console)
    r = ota(fwdir, "--install", "--timeout", "120")
    assert r.returncode == 1, r.out
    assert "rolled back" in r.stderr and "Traceback" not in r.out
    sim.board.wait_console(rb"the update to version 2.0-bad failed: it crashed", start=console)
    sim.board.wait_console(rb"vue-utility 1.0-old on unix", start=console)
    d = device_info(ha, lambda d: d["failed"] and d["version"] == "1.0-old")
    assert d["failed"]["version"] == "2.0-bad" and "this release is broken" in d["failed"]["why"]
    s = state(ha, lambda s: "rolled back" in s["release_summary"])
    assert s["installed_version"] == "1.0-old" and "2.0-bad" in s["release_summary"]
    # HA's Last error says it too.
    ha.diag(lambda d: "2.0-bad" in d["last_error"] and "rolled back" in d["last_error"], timeout=30)
    assert device.pointer()["active"] == "app_a" and device.slot_files("app_a") == before
    assert b"crashes in a row" not in bytes(sim.board.console[console:])  # not the crash policy's 3 tries


def test_a_release_whose_config_never_reaches_the_broker_rolls_back(device, fwdir, ha, broker):
    sim = device.sim
    data = device.data_files()
    set_version(fwdir, "2.0-lost")
    write_config(fwdir, mqtt={"port": sim_env.free_port()})  # nothing listens there
    console = len(sim.board.console)
    r = ota(fwdir, "--with-config", "--install", "--broker", "127.0.0.1:%d" % broker.port,
            "--timeout", "120")
    assert r.returncode == 1, r.out
    assert "rolled back" in r.stderr
    sim.board.wait_console(rb"on probation with the configuration the update brought", start=console)
    sim.board.wait_console(rb"the update to version 2.0-lost failed: no MQTT connection within 5 minutes",
                           start=console)
    sim.board.wait_console(rb"vue-utility 1.0-old on unix", start=console)
    d = device_info(ha, lambda d: d["failed"] and d["version"] == "1.0-old")
    assert "no MQTT connection" in d["failed"]["why"]
    assert device.data_files() == data  # the old configuration is the one in use
    no_trouble(sim, console)


def test_a_release_with_a_new_config_that_works_makes_it_the_config(device, fwdir, ha):
    set_version(fwdir, "2.0-cfg")
    write_config(fwdir, meter={"poll_interval_s": 45})
    r = ota(fwdir, "--with-config", "--install", "--timeout", "120")
    assert r.returncode == 0, r.out
    ha.diag(lambda d: d["poll_interval_s"] == 45, timeout=30)
    with open(os.path.join(device.fs, "config.json")) as f:
        assert json.load(f)["meter"]["poll_interval_s"] == 45
    assert not os.path.exists(os.path.join(device.fs, "app_b", "config.json"))
    assert device.pointer() == {"active": "app_b"}


# ---- releases refused with nothing changed -------------------------------------------------------
def _release(fw, key, device=NODE, mpy=None):
    tool = _tool()
    lib = os.path.join(ROOT, "build", "lib")
    return tool.build_release(str(fw), lib, None, device, mpy, "test", key, False)


def _publish(ha, header, chunks):
    for t, p in chunks:
        ha.c.publish("%s/%s" % (BASE, t), p, qos=1, retain=True).wait_for_publish(5)
    ha.c.publish(BASE + "/ota/release", header, qos=1, retain=True).wait_for_publish(5)


@pytest.mark.parametrize("how, says", [
    ("another key", "its signature is not valid"),
    ("another device", "it is for device vue_utility_other"),
    ("another mpy", "this MicroPython loads version"),
    ("a damaged chunk", "does not match its sha256"),
    ("a chunk missing", "never came from the broker"),
    ("a short chunk", "bytes instead of"),
])
def test_a_bad_release_is_refused_and_nothing_changes(device, fwdir, ha, how, says):
    sim = device.sim
    before, pointer, data = device.slot_files("app_a"), device.pointer(), device.data_files()
    set_version(fwdir, "2.0-bad")
    key = secrets.token_hex(32) if how == "another key" else device.key
    dev = "vue_utility_other" if how == "another device" else NODE
    mpy = None
    if how == "another mpy":
        mpy = json.loads(ha.wait_topic(BASE + "/ota/device"))["mpy"]
        assert mpy, "the device reports its .mpy version"
    header, chunks = _release(fwdir, key, dev)
    if mpy:  # a release built by an mpy-cross of another MicroPython (re-signed: only the version differs)
        tool = _tool()
        body = json.loads(header.split(b" ", 1)[1])
        body["mpy"] = mpy - 1
        raw = json.dumps(body, separators=(",", ":")).encode()
        header = tool.sign(raw, key).encode() + b" " + raw
    files = [(i, (t, p)) for i, (t, p) in enumerate(chunks) if t.split("/")[2] not in ("m", "c")]
    i, (t, p) = max(files, key=lambda x: len(x[1][1]))  # a chunk of a file
    if how == "a damaged chunk":
        chunks[i] = (t, bytes([p[0] ^ 1]) + p[1:])
    elif how == "a short chunk":
        chunks[i] = (t, p[:-1])
    elif how == "a chunk missing":
        del chunks[i]
    mark = ha.mark()
    _publish(ha, header, chunks)
    if how in ("another key", "another device", "another mpy"):
        s = state(ha, lambda s: "refused" in s["release_summary"], after=mark)
        assert says in s["release_summary"] and s["latest_version"] == "1.0-old"
        ha.publish(BASE + "/cmd/update", "install")
        state(ha, lambda s: "Install refused: no valid release" in s["release_summary"], after=mark)
    else:
        state(ha, lambda s: s["latest_version"] == "2.0-bad", after=mark)
        ha.publish(BASE + "/cmd/update", "install")
        s = state(ha, lambda s: "Update failed" in s["release_summary"], after=mark, timeout=90)
        assert says in s["release_summary"] and "Nothing was changed" in s["release_summary"]
        assert s["installed_version"] == "1.0-old" and s["in_progress"] is False
    time.sleep(1)
    assert device.pointer() == pointer and device.slot_files("app_a") == before
    assert device.data_files() == data
    assert not sim.board.resets[1:], sim.board.resets  # no restart: the app went on running
    d = ha.diag(after=ha.mark(), timeout=90)
    assert d["link"] == "ok"


# ---- a kill at every stage leaves a device that boots a whole app --------------------------------
def test_power_cut_during_the_download_keeps_the_old_app_and_the_next_install_completes(device, fwdir, ha):
    sim = device.sim
    set_version(fwdir, "2.0-new")
    assert ota(fwdir).returncode == 0
    mark = ha.mark()
    ha.publish(BASE + "/cmd/update", "install")
    state(ha, lambda s: s["in_progress"] and s["update_percentage"] >= 10, after=mark)
    console = len(sim.board.console)
    sim.board.power_cycle()
    sim.board.wait_console(rb"boot: app 1.0-old from app_a", start=console)
    sim.board.wait_console(rb"MQTT connected", start=console)
    assert b"cannot be used" not in bytes(sim.board.console[console:])
    assert device.pointer() == {"active": "app_a"}
    r = ota(fwdir, "--install", "--timeout", "120")
    assert r.returncode == 0, r.out
    assert device.pointer() == {"active": "app_b"}


def test_power_cut_during_probation_brings_the_old_app_back(device, fwdir, ha):
    sim = device.sim
    set_version(fwdir, "2.0-new")
    assert ota(fwdir).returncode == 0
    device.meter.set_fault("silence")  # the new app cannot prove itself healthy yet
    ha.publish(BASE + "/cmd/update", "install")
    deadline = time.time() + 90
    while True:  # the new app's first boot has begun: the loader counted it
        p = device.pointer()
        if p.get("trial", {}).get("boots") == 1:
            break
        assert time.time() < deadline, p
        time.sleep(0.01)
    console = len(sim.board.console)
    sim.board.power_cycle()
    device.meter.clear_faults()
    sim.board.wait_console(rb"the update to version 2.0-new failed: it restarted before it proved itself "
                           rb"healthy", start=console)
    sim.board.wait_console(rb"vue-utility 1.0-old on unix", start=console)
    sim.board.wait_console(rb"MQTT connected", start=console)
    p = device.pointer()
    assert p["active"] == "app_a" and p["failed"]["version"] == "2.0-new"


# The moments between the last chunk and the new app's first boot are too short to cut the power
# at from outside: the filesystem each one leaves is made here, and the board booted from it.
@pytest.mark.parametrize("stage, boots, says", [
    ("downloading", "app_a", None),  # app_b half written, its manifest not there
    ("staged", "app_a", None),  # app_b whole, app.json not switched yet
    ("switched", "app_b", None),  # app.json switched: the new app's first boot, on probation
    ("first boot cut", "app_a", "it restarted before it proved itself healthy"),
    ("pointer being replaced", "app_a", None),  # app.json.tmp half written, app.json intact
])
def test_the_boot_after_a_cut_at_each_stage_runs_a_whole_app(tmp_path, stage, boots, says):
    from test_flash import make_slot, FILES
    make_slot(tmp_path, "app_a", FILES, "1.0-old")
    make_slot(tmp_path, "app_b", FILES, "2.0-new")
    pointer = {"active": "app_a"}
    if stage == "downloading":
        (tmp_path / "app_b" / "manifest.json").rename(tmp_path / "app_b" / "manifest.new")
        (tmp_path / "app_b" / "app.mpy").write_bytes(b"A" * 300)
    elif stage == "switched":
        pointer = {"active": "app_b", "trial": {"from": "app_a", "boots": 0}}
    elif stage == "first boot cut":
        pointer = {"active": "app_b", "trial": {"from": "app_a", "boots": 1}}
    elif stage == "pointer being replaced":
        (tmp_path / "app.json.tmp").write_text('{"active": "app_')
    (tmp_path / "app.json").write_text(json.dumps(pointer))
    env = dict(os.environ, MICROPYPATH=os.path.join(ROOT, "firmware"))
    r = subprocess.run([sim_env.micropython(), "-c", "import loader; loader._probation(); s, n = loader.choose(); "
                        "print(repr(s)); print(loader.trial is not None)"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=30)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) >= 2, r.stdout + r.stderr
    assert lines[-2] == repr(boots), r.stdout
    assert lines[-1] == str(stage == "switched"), r.stdout  # on probation only when switched
    if says:
        assert says in r.stdout
        p = json.loads((tmp_path / "app.json").read_text())
        assert p["active"] == "app_a" and p["failed"]["version"] == "2.0-new" and says in p["failed"]["why"]


# ---- memory during a download ----------------------------------------------------------------------
def test_a_download_fits_the_soak_heap(mgm, broker, ha, tmp_path, fwdir):
    """The whole install (download, checks, switch) with the heap the soak runs in."""
    from test_soak import HEAP
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import flash as flash_tool
    meter = mgm(8)
    key = secrets.token_hex(32)
    wd = tmp_path / "dev"
    stage = tmp_path / "stage"
    flash_tool.stage_app(str(fwdir), os.path.join(ROOT, "build", "lib"), str(stage))
    os.makedirs(wd)
    os.rename(stage / "slot", wd / "app_a")
    (wd / "app.json").write_text('{"active": "app_a"}')
    (wd / "secrets.json").write_text(json.dumps({"ota": {"key": key}}))
    cfg = sim_env.firmware_config(meter.path, broker.port, debug={"time_scale": 50})
    # main.py from the firmware folder runs loader.main(), which boots app_a from the work dir.
    proc = sim_env.start_firmware(str(wd), cfg, heapsize=HEAP)
    try:
        ha.wait_topic(BASE + "/ota/device", lambda p: '"ota": true' in p, timeout=60)
        set_version(fwdir, "2.0-new")
        header, chunks = _release(fwdir, key)
        mark = ha.mark()
        _publish(ha, header, chunks)
        state(ha, lambda s: s["latest_version"] == "2.0-new", after=mark)
        ha.publish(BASE + "/cmd/update", "install")
        try:
            status = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = None
        out = proc.stdout.read().decode(errors="replace")
        assert status == 3, out  # the restart into the new app (the runner's restart status)
        assert "MemoryError" not in out and "out of memory" not in out and "Update failed" not in out, out
        assert json.loads((wd / "app.json").read_text())["active"] == "app_b"
    finally:
        if proc.poll() is None:
            proc.kill()
