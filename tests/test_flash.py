"""tools/flash.py end to end: the real esptool and mpremote against a simulated ESP32 (ROM
bootloader + flasher stub on a pty) whose application is the real MicroPython unix port."""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "devices"))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from esp32_sim import (ESP8266_MAGIC, FLASH_ID_8MB, MP_IMAGE_OFFSET, Esp32Sim,  # noqa: E402
                       stock_flash)

import flash as flash_tool  # noqa: E402

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
    cfg = json.load(open(os.path.join(ROOT, "firmware", "config.json")))
    cfg["wifi"]["ssid"] = "home"
    cfg["mqtt"]["host"] = "192.168.1.10"
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
    on_board = set()
    for dirpath, _, names in os.walk(sim.fsdir):
        on_board |= {os.path.relpath(os.path.join(dirpath, n), sim.fsdir) for n in names}
    assert {"main.py", "config.json", "secrets.json", "app.mpy", "config.mpy",
            "decoders/zcl.mpy", "decoders/v2.mpy", "board/esp32.mpy",
            "umqtt/simple.mpy"} <= on_board
    assert not [f for f in on_board if f.endswith(".py") and f != "main.py"]
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


def test_deploy_replaces_stale_sources(run, sims):
    sim = sims(flash=board_flash(), in_rom=False)
    with open(os.path.join(sim.fsdir, "app.py"), "w") as f:
        f.write("raise SystemExit('old source would shadow app.mpy')\n")
    r = run("deploy", sim)
    assert r.returncode == 0, r.out
    names = os.listdir(sim.fsdir)
    assert "app.mpy" in names and "app.py" not in names and "main.py" in names


def test_deploy_without_micropython_says_so(run, sims, fwdir):
    sim = sims(in_rom=False, enter_rom_on_sync=False)  # stock firmware running
    r = run("deploy", sim, "--wait", "2")
    assert r.returncode == 1
    assert "MicroPython does not answer" in r.stderr and "Traceback" not in r.out
