"""tools/flash.py end to end: the real esptool and mpremote against a simulated ESP32 (ROM
bootloader + flasher stub on a pty) whose application is the real MicroPython unix port."""
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "devices"))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from esp32_sim import (ESP8266_MAGIC, FLASH_ID_8MB, MP_IMAGE_OFFSET, Esp32Sim,  # noqa: E402
                       stock_flash)

import flash as flash_tool  # noqa: E402
import sim_env  # noqa: E402

UMQTT = os.path.join(ROOT, "build", "lib", "umqtt", "simple.py")
MAC = "240ac4123456"
pytestmark = pytest.mark.skipif(not os.path.exists(UMQTT), reason="run `make deps` (umqtt.simple)")


def micropython_image():
    """A well-formed ESP32 app image (esptool's own image-info accepts it) marked MicroPython."""
    from esptool.bin_image import ESP32FirmwareImage, ImageSegment
    img = ESP32FirmwareImage()
    img.entrypoint = 0x40080000
    seg = ImageSegment(0x3FFB0000, b"MicroPython v1.29 ESP32_GENERIC (simulated)\0".ljust(4096, b"\0"))
    seg.name = ".dram0.data"
    img.segments = [seg]
    return img.save(None)


@pytest.fixture
def sims():
    started = []

    def make(**kw):
        s = Esp32Sim(**kw).start()
        started.append(s)
        return s
    yield make
    for s in started:
        s.stop()


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "ESP32_GENERIC-20260101-v1.29.0.bin"
    p.write_bytes(micropython_image())
    return str(p)


def write_config(fw, **over):
    cfg = json.load(open(fw / "config.json"))  # the fixture's copy, with earlier changes
    cfg["wifi"]["ssid"] = cfg["wifi"]["ssid"] or "home"
    cfg["mqtt"]["host"] = cfg["mqtt"]["host"] or "192.168.1.10"
    for k, v in over.items():
        cfg[k].update(v)
    (fw / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def fwdir(tmp_path):
    fw = tmp_path / "firmware"
    shutil.copytree(os.path.join(ROOT, "firmware"), fw,
                    ignore=shutil.ignore_patterns("__pycache__", "secrets.json"))
    write_config(fw)
    (fw / "secrets.json").write_text(json.dumps({"wifi": {"password": "s3cret-wifi"}}))
    return fw


@pytest.fixture
def run(tmp_path, fwdir):
    backups = tmp_path / "backups"

    def go(command, sim=None, *extra):
        cmd = [sys.executable, os.path.join(ROOT, "tools", "flash.py"), command,
               "--backup-dir", str(backups), "--firmware-dir", str(fwdir),
               "--before", "no-reset", "--after", "no-reset", "--yes"]
        if sim is not None:
            cmd += ["--port", sim.path]
        r = subprocess.run(cmd + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=120)
        r.out = r.stdout + r.stderr
        return r
    go.backups = backups
    return go


def last_line(r):
    return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""


def assert_refused(r, sim, original, text):
    assert r.returncode == 1, r.out
    assert text in r.stderr, r.out
    assert "Traceback" not in r.out
    assert bytes(sim.flash) == original and sim.writes == 0


def test_backup_is_verified_then_reused(run, sims):
    sim = sims()
    original = bytes(sim.flash)
    r = run("backup", sim)
    assert r.returncode == 0, r.out
    [bin_path] = glob.glob(str(run.backups / (MAC + "-*.bin")))
    data = open(bin_path, "rb").read()
    assert data == original and sim.writes == 0
    want = open(bin_path + ".sha256").read().split()[0]
    assert want == hashlib.sha256(original).hexdigest()
    reads, mtime = sim.reads, os.path.getmtime(bin_path)

    r = run("backup", sim)
    assert r.returncode == 0, r.out
    assert "Reusing the verified backup" in r.stdout
    assert sim.reads == reads and os.path.getmtime(bin_path) == mtime
    assert len(os.listdir(run.backups)) == 2


def test_backup_refused_when_the_reads_differ(run, sims, image):
    sim = sims()
    original = bytes(sim.flash)
    sim.corrupt_reads = 1
    r = run("flash", sim, "--image", image)
    assert_refused(r, sim, original, "the two reads of the flash differ")
    assert "corrupted a read" in sim.log
    assert not os.path.exists(run.backups) or os.listdir(run.backups) == []


def in_small_disk(cmd, folder, size="3m"):
    """cmd run with `folder` on a tmpfs of `size` (a private mount namespace: nothing to clean)."""
    return ["unshare", "--mount", "--map-root-user", "sh", "-c",
            'mount -t tmpfs -o size=%s tmpfs "$0" && exec "$@"' % size, str(folder)] + cmd


@pytest.mark.parametrize("command", ["backup", "flash"])
def test_no_backup_is_started_without_room_for_it(sims, tmp_path, image, fwdir, command):
    if not shutil.which("unshare") or subprocess.run(["unshare", "--mount", "--map-root-user", "true"],
                                                      capture_output=True).returncode:
        pytest.skip("cannot make a small filesystem here (unshare --mount --map-root-user)")
    sim = sims()
    original = bytes(sim.flash)
    small = tmp_path / "small"
    small.mkdir()
    cmd = [sys.executable, os.path.join(ROOT, "tools", "flash.py"), command, "--backup-dir", str(small),
           "--firmware-dir", str(fwdir), "--image", image, "--before", "no-reset", "--after", "no-reset",
           "--yes", "--port", sim.path]
    r = subprocess.run(in_small_disk(cmd, small), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "has 3.1 MB free; the backup of the 4 MB flash needs 5 MB" in r.stderr, r.stderr
    assert "nothing was read or written" in last_line(r) and "Traceback" not in r.stderr
    assert sim.reads == 0 and sim.writes == 0 and bytes(sim.flash) == original


def test_damaged_backup_is_not_reused_nor_overwritten(run, sims):
    sim = sims()
    os.makedirs(run.backups)
    bad = run.backups / (MAC + "-20200101.bin")
    bad.write_bytes(b"\0" * 0x400000)
    (run.backups / (MAC + "-20200101.bin.sha256")).write_text("00" * 32 + "  x\n")
    r = run("backup", sim)
    assert r.returncode == 0, r.out
    assert "does not match its .sha256" in r.stdout
    assert bad.read_bytes() == b"\0" * 0x400000
    assert len(glob.glob(str(run.backups / "*.bin"))) == 2


def test_flash_backs_up_first_installs_the_app_and_restore_gives_back_the_stock_bytes(
        run, sims, image, fwdir):
    sim = sims()
    original = bytes(sim.flash)
    r = run("flash", sim, "--image", image)
    assert r.returncode == 0, r.out
    for n in range(1, 6):
        assert "[%d/5]" % n in r.stdout
    # The backup: complete, verified, and taken before the first write.
    [bin_path] = glob.glob(str(run.backups / (MAC + "-*.bin")))
    assert open(bin_path, "rb").read() == original
    first_read = next(i for i, e in enumerate(sim.log) if e.startswith("read 0x0+0x400000"))
    first_erase = next(i for i, e in enumerate(sim.log) if e.startswith("erase"))
    assert first_read < first_erase
    # MicroPython image in place; the board booted it and got the app.
    img = micropython_image()
    assert bytes(sim.flash[MP_IMAGE_OFFSET:MP_IMAGE_OFFSET + len(img)]) == img
    on_board = files_on(sim)
    assert {"boot.py", "main.py", "loader.mpy", "app.json", "config.json", "secrets.json"} <= on_board
    slot = json.load(open(os.path.join(sim.fsdir, "app.json")))["active"]
    assert {slot + "/" + f for f in ("app.mpy", "config.mpy", "start.mpy", "decoders/zcl.mpy",
                                     "decoders/v2.mpy", "board/esp32.mpy", "umqtt/simple.mpy",
                                     "manifest.json")} <= on_board
    assert not [f for f in on_board if f.endswith(".py") and f not in ("boot.py", "main.py")]
    # The tool restarted the board: it boots the app from the slot (safe mode here: this config
    # is for the ESP32, and the simulated board is the unix port) and keeps its REPL.
    sim.board.wait_console(rb"boot: app \S+ from " + slot.encode())
    sim.board.wait_console(rb"uart.device: required on the unix port")
    # The compiled modules really load on MicroPython and read the pushed config.
    out = subprocess.run([sys.executable, "-m", "mpremote", "connect", sim.path, "resume", "exec",
                          "import config; c, e = config.load_file('config.json', 'secrets.json');"
                          "print(c['wifi']['ssid'], c['mqtt']['host'], e)"],
                         capture_output=True, text=True, timeout=30)
    assert "home 192.168.1.10 []" in out.stdout, out.stdout + out.stderr
    assert "s3cret-wifi" not in r.out  # the password never shows in the tool's output

    # Back to the bootloader (the sim: user holds GPIO0 + reset) and restore.
    r = run("restore", sim)
    assert r.returncode == 0, r.out
    assert bytes(sim.flash) == original


@pytest.mark.parametrize("kw, text", [
    (dict(magic=ESP8266_MAGIC), "is an ESP8266, not an ESP32"),
    (dict(flash_id=FLASH_ID_8MB), "flash size is 8MB, not the 4MB"),
    (dict(in_rom=False, enter_rom_on_sync=False), "no answer from the ESP32 bootloader"),
])
def test_device_errors_leave_the_device_unchanged(run, sims, image, kw, text):
    sim = sims(**kw)
    original = bytes(sim.flash)
    r = run("flash", sim, "--image", image)
    assert_refused(r, sim, original, text)
    # One line from flash.py says what happened and what to do; no traceback.
    assert last_line(r).startswith("flash.py flash: ")
    if "bootloader" in text:
        assert "hold GPIO0 low" in last_line(r)


def test_missing_image_is_refused_before_touching_the_device(run, sims, tmp_path, monkeypatch, capsys):
    sim = sims()
    original = bytes(sim.flash)
    r = run("flash", sim, "--image", str(tmp_path / "nope.bin"))
    assert_refused(r, sim, original, "nope.bin not found")
    assert sim.reads == 0
    # No --image and nothing in firmware-images/: says where to download it.
    monkeypatch.setattr(flash_tool, "ROOT", str(tmp_path))
    with pytest.raises(flash_tool.Fail, match="micropython.org/download/ESP32_GENERIC"):
        flash_tool.find_image(None)
    not_image = tmp_path / "x.bin"
    not_image.write_bytes(b"PK\3\4")
    with pytest.raises(flash_tool.Fail, match="not an ESP32 firmware image"):
        flash_tool.find_image(str(not_image))


def test_no_port(monkeypatch, capsys):
    from serial.tools import list_ports
    monkeypatch.setattr(list_ports, "comports", lambda: [])
    assert flash_tool.main(["backup"]) == 1
    err = capsys.readouterr().err
    assert "no USB serial port found" in err and "PORT=" in err

    class P:
        def __init__(self, d):
            self.device, self.vid, self.description = d, 0x10C4, "CP2102"
    monkeypatch.setattr(list_ports, "comports", lambda: [P("/dev/ttyUSB0"), P("/dev/ttyUSB1")])
    assert flash_tool.main(["backup"]) == 1
    assert "several USB serial ports" in capsys.readouterr().err
    monkeypatch.setattr(list_ports, "comports", lambda: [P("/dev/ttyUSB7")])
    assert flash_tool.find_port(None) == "/dev/ttyUSB7"


def files_on(sim):
    out = set()
    for dirpath, _, names in os.walk(sim.fsdir):
        out |= {os.path.relpath(os.path.join(dirpath, n), sim.fsdir) for n in names}
    return out


def board_flash():
    f = stock_flash()
    img = micropython_image()
    f[MP_IMAGE_OFFSET:MP_IMAGE_OFFSET + len(img)] = img
    return f


def test_config_refuses_an_invalid_config_and_pushes_a_valid_one(run, sims, fwdir):
    sim = sims(flash=board_flash(), in_rom=False)
    write_config(fwdir, meter={"poll_interval_s": 1})
    r = run("config", sim)
    assert r.returncode == 1, r.out
    assert "meter.poll_interval_s: must be between 5 and 300" in r.stderr
    assert "Traceback" not in r.out
    assert not os.path.exists(os.path.join(sim.fsdir, "config.json"))

    write_config(fwdir, meter={"poll_interval_s": 60})
    r = run("config", sim)
    assert r.returncode == 0, r.out
    pushed = json.load(open(os.path.join(sim.fsdir, "config.json")))
    assert pushed["meter"]["poll_interval_s"] == 60
    assert os.path.exists(os.path.join(sim.fsdir, "secrets.json"))
    assert "s3cret-wifi" not in r.out
    assert not [f for f in os.listdir(sim.fsdir) if f.endswith(".mpy")]  # config only

    # The broker's CA (mqtt.ca_file) goes with the configuration; one that is missing or is no
    # certificate is refused before anything is sent.
    write_config(fwdir, mqtt={"tls": True, "ca_file": "broker-ca.pem"})
    r = run("config", sim)
    assert r.returncode == 1, r.out
    assert "mqtt.ca_file " in r.stderr and "broker-ca.pem: file not found" in r.stderr
    (fwdir / "broker-ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot one\n")
    r = run("config", sim)
    assert r.returncode == 1 and "has no END line" in r.stderr, r.out
    assert not os.path.exists(os.path.join(sim.fsdir, "broker-ca.pem"))
    assert json.load(open(os.path.join(sim.fsdir, "config.json")))["mqtt"]["tls"] is False
    ca = sim_env.Broker.make_certs(str(fwdir.parent / "certs"))[0]
    shutil.copy(ca, fwdir / "broker-ca.pem")
    r = run("config", sim)
    assert r.returncode == 0, r.out
    assert "copied broker-ca.pem and config.json" in r.stdout
    with open(ca, "rb") as f, open(os.path.join(sim.fsdir, "broker-ca.pem"), "rb") as g:
        assert f.read() == g.read()


def test_deploy_over_an_old_flat_install_replaces_it(run, sims):
    sim = sims(flash=board_flash(), in_rom=False)
    # What an older flash.py left: the app's modules at the top level, one a stale source.
    old = {"app.py": "raise SystemExit('old source would shadow the new app')\n", "log.mpy": "x",
           "board/__init__.mpy": "x", "umqtt/simple.mpy": "x"}
    for name, text in old.items():
        os.makedirs(os.path.join(sim.fsdir, os.path.dirname(name)), exist_ok=True)
        with open(os.path.join(sim.fsdir, name), "w") as f:
            f.write(text)
    r = run("deploy", sim)
    assert r.returncode == 0, r.out
    assert not files_on(sim) & set(old)
    assert not {"board", "umqtt"} & set(os.listdir(sim.fsdir))
    sim.board.wait_console(rb"boot: app \S+ from app_a")
    sim.board.wait_console(rb"SAFE MODE")  # the new app's start.py ran and read the config
    assert b"old source would shadow" not in sim.board.console


def test_deploy_without_micropython_says_so(run, sims, fwdir):
    sim = sims(in_rom=False, enter_rom_on_sync=False)  # stock firmware running
    r = run("deploy", sim, "--wait", "2")
    assert r.returncode == 1
    assert "MicroPython does not answer" in r.stderr and "Traceback" not in r.out


# ---- a board running the app: deploy, config, a push cut off half way -------------------------
def set_version(fw, version):
    p = fw / "app.py"
    p.write_text(re.sub(r'(?m)^VERSION = "[^"]*"', 'VERSION = "%s"' % version, p.read_text()))


@pytest.fixture
def running(run, sims, fwdir, mgm, broker):
    """A board (the unix port behind the simulated ESP32) running the app `make deploy` put on it,
    with a simulated MGM111 and a broker; the watchdog at 5 s (debug.time_scale)."""
    meter = mgm(8)
    write_config(fwdir, mqtt={"host": "127.0.0.1", "port": broker.port}, uart={"device": meter.path},
                 meter={"poll_interval_s": 5, "startup_delay_s": 0}, debug={"time_scale": 50})
    set_version(fwdir, "1.0-old")
    sim = sims(flash=board_flash(), in_rom=False)
    r = run("deploy", sim)
    assert r.returncode == 0, r.out
    sim.board.wait_console(rb"vue-utility 1.0-old on unix")
    sim.board.wait_console(rb"MQTT connected")
    return sim


def active_slot(sim):
    return json.load(open(os.path.join(sim.fsdir, "app.json")))["active"]


def test_deploy_and_config_reach_a_running_app(run, running, fwdir, ha):
    sim = running
    assert active_slot(sim) == "app_a"
    set_version(fwdir, "2.0-new")
    mark = len(sim.board.console)
    r = run("deploy", sim)
    assert r.returncode == 0, r.out
    assert "The device boots app_a (version 1.0-old); installing version 2.0-new in app_b" in r.stdout
    sim.board.wait_console(rb"boot: app 2.0-new from app_b", start=mark)
    sim.board.wait_console(rb"vue-utility 2.0-new on unix", start=mark)
    sim.board.wait_console(rb"MQTT connected", start=mark)
    assert active_slot(sim) == "app_b"
    # The previous app stays whole beside it, for a fallback.
    assert json.load(open(os.path.join(sim.fsdir, "app_a", "manifest.json")))["version"] == "1.0-old"

    # A new configuration for the running app: validated, swapped in by a rename, read at restart.
    write_config(fwdir, meter={"poll_interval_s": 45})
    seen, resets = ha.mark(), len(sim.board.resets)
    r = run("config", sim)
    assert r.returncode == 0, r.out
    assert "copied config.json" in r.stdout and "s3cret-wifi" not in r.out
    ha.diag(lambda d: d["poll_interval_s"] == 45, after=seen, timeout=30)
    assert not [f for f in os.listdir(sim.fsdir) if f.endswith(".tmp")]
    # One restart, the tool's; never the watchdog, never a crash.
    assert sim.board.resets[resets:] == ["hard reset (status 3)"]
    assert b"watchdog:" not in sim.board.console and b"crashed" not in sim.board.console


@pytest.mark.parametrize("cut_after", [1, 18])  # of 18 files + the manifest
def test_a_deploy_cut_off_half_way_leaves_a_whole_app_booting(run, running, fwdir, cut_after):
    sim = running
    set_version(fwdir, "2.0-new")
    target = os.path.join(sim.fsdir, "app_b")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "flash.py"), "deploy", "--port", sim.path,
           "--firmware-dir", str(fwdir)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # The user pulls the cable (flash.py and its mpremote end at once) after `cut_after` files.
        while p.poll() is None and len(files_on_dir(target)) < cut_after:
            time.sleep(0.002)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    copied = files_on_dir(target)
    assert copied, "the cut came before any file was copied"
    assert active_slot(sim) == "app_a", "the cut came after the switch"
    # Left alone, the board is not reset by its watchdog (5 s here) however long it waits ...
    resets = list(sim.board.resets)
    time.sleep(6)
    assert sim.board.resets == resets and b"watchdog" not in sim.board.console
    # ... then the user presses RESET.
    mark = len(sim.board.console)
    sim.board.power_cycle()
    sim.board.wait_console(rb"boot: app 1.0-old from app_a", start=mark)
    sim.board.wait_console(rb"vue-utility 1.0-old on unix", start=mark)
    sim.board.wait_console(rb"MQTT connected", start=mark)
    assert b"cannot be used" not in sim.board.console[mark:], "%d files copied" % len(copied)
    # And the next deploy completes.
    mark = len(sim.board.console)
    r = run("deploy", sim)
    assert r.returncode == 0, r.out
    sim.board.wait_console(rb"vue-utility 2.0-new on unix", start=mark)


def test_a_damaged_slot_is_not_booted_the_other_one_is(run, running, fwdir):
    sim = running
    set_version(fwdir, "2.0-new")
    assert run("deploy", sim).returncode == 0
    sim.board.wait_console(rb"vue-utility 2.0-new on unix")
    # Flash damage, or a copy by hand: a file of the active slot loses its tail.
    app = os.path.join(sim.fsdir, "app_b", "app.mpy")
    size = os.path.getsize(app)
    with open(app, "r+b") as f:
        f.truncate(size // 2)
    mark = len(sim.board.console)
    sim.board.power_cycle()
    sim.board.wait_console(rb"app slot app_b cannot be used: app.mpy has %d bytes instead of %d"
                           % (size // 2, size), start=mark)
    sim.board.wait_console(rb"starting the app in app_a instead", start=mark)
    sim.board.wait_console(rb"vue-utility 1.0-old on unix", start=mark)
    sim.board.wait_console(rb"MQTT connected", start=mark)
    # `make deploy` repairs it, writing over the damaged slot, not over the one that runs.
    mark = len(sim.board.console)
    r = run("deploy", sim)
    assert r.returncode == 0, r.out
    assert "The device boots app_a (version 1.0-old); installing version 2.0-new in app_b" in r.stdout
    sim.board.wait_console(rb"vue-utility 2.0-new on unix", start=mark)


def files_on_dir(path):
    out = []
    for dirpath, _, names in os.walk(path):
        out += [os.path.join(dirpath, n) for n in names]
    return out


# ---- the loader's choice, case by case (firmware/loader.py under MicroPython) ------------------
def make_slot(root, name, files, version):
    listed = []
    for path, data in files.items():
        p = root / name / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        listed.append([path, len(data), hashlib.sha256(data).hexdigest()])
    (root / name / "manifest.json").write_text(json.dumps({"version": version, "files": listed}))


FILES = {"start.mpy": b"S" * 300, "board/unix.mpy": b"U" * 200, "app.mpy": b"A" * 1000}


B = "app slot app_b cannot be used: "


@pytest.mark.parametrize("damage, boots, says", [
    (None, "app_b", None),
    ("rm app_b/manifest.json", "app_a", B + "no manifest.json (the copy never finished)"),
    ("rm app_b/board/unix.mpy", "app_a", B + "board/unix.mpy is missing"),
    ("cut app_b/app.mpy", "app_a", B + "app.mpy has 500 bytes instead of 1000"),
    ("garble app_b/manifest.json", "app_a", B + "its manifest.json cannot be read"),
    ("garble app.json", "app_a", "app.json cannot be read: trying both app slots"),
    ("rm app.json", "", None),  # no app.json: modules from sys.path as found (the unix runner)
    ("rm app_b/manifest.json app_a/app.mpy", None, "app slot app_a cannot be used: app.mpy is missing"),
])
def test_the_loader_boots_only_a_whole_slot(tmp_path, damage, boots, says):
    make_slot(tmp_path, "app_a", FILES, "1")
    make_slot(tmp_path, "app_b", FILES, "2")
    (tmp_path / "app.json").write_text('{"active": "app_b"}')
    words = (damage or "").split()
    for target in words[1:]:
        p = tmp_path / target
        {"rm": lambda: p.unlink(), "cut": lambda: p.write_bytes(p.read_bytes()[:500]),
         "garble": lambda: p.write_text('{"files": [["app.mpy", 1000')}[words[0]]()
    env = dict(os.environ, MICROPYPATH=os.path.join(ROOT, "firmware"))
    r = subprocess.run([sim_env_micropython(), "-c", "import loader; s, n = loader.choose(); "
                        "print(repr(s)); print('\\n'.join(n))"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=30)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines, r.stdout + r.stderr
    assert lines[0] == repr(boots), r.stdout
    notes = [ln for ln in lines[1:] if ln]
    assert (says in notes) if says else notes == [], r.stdout


def sim_env_micropython():
    import sim_env
    return sim_env.micropython()
