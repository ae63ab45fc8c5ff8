# The stable part of the firmware, with boot.py and main.py; the app itself lives in a slot.
# On the device:  boot.py  main.py  loader.mpy  app.json  app_a/  app_b/  config.json ...
# app.json names the active slot; a slot is whole when its manifest.json (written last by
# `make deploy`) lists every file with its size. Deploys (and OTA later) write the inactive slot,
# then switch app.json with one atomic rename, so the app that boots is always a whole set of
# files. This module picks the slot, keeps the watchdog fed whenever no app runs (the REPL must
# stay usable: the ESP32's watchdog cannot be stopped) and applies the crash policy.
# An app installed over the air boots on probation (app.json: "trial", probation.py): a crash
# here, or any restart before it confirms itself healthy, brings the previous slot back. This file
# and probation.py are never replaced over the air: the way back does not depend on the code tried.
import json
import os
import sys

SLOTS = ("app_a", "app_b")
POINTER = "app.json"
MANIFEST = "manifest.json"
CRASH_LOG = "crash.log"
GIVE_UP_AFTER = 3  # crashes without 10 good minutes between them (the app removes crash.log)
SAFE_MODE = 2  # unix port exit statuses; a board stays in its REPL instead
GAVE_UP = 4

slot = None  # the slot booted: "app_a"/"app_b", "" (modules from sys.path as found), None (no app)
version = None
trial = None  # while the booted app is on probation: {"from": the slot to go back to, "boots": 1}
failed = None  # the last update rolled back: {"version": ..., "why": words}, until the next one
_board = None
_booted = False


def _here(name):
    return os.getcwd().rstrip("/") + "/" + name


def _read_json(path):
    with open(path) as f:
        return json.loads(f.read())


def problem(name):
    """None when slot `name` is whole, else what is wrong, in words."""
    try:
        m = _read_json(name + "/" + MANIFEST)
        files = m["files"]
    except OSError:
        return "no %s (the copy never finished)" % MANIFEST
    except (ValueError, KeyError, TypeError, MemoryError):
        return "its %s cannot be read" % MANIFEST
    try:
        for path, size, _sha in files:
            try:
                have = os.stat(name + "/" + path)[6]
            except OSError:
                return "%s is missing" % path
            if have != size:
                return "%s has %d bytes instead of %d" % (path, have, size)
    except (ValueError, TypeError):
        return "its %s cannot be read" % MANIFEST
    return None


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def choose():
    """-> (slot, notes): the slot to boot ("" when there is no app.json: modules come from sys.path
    as found, e.g. the unix runner; None when nothing whole is installed) and what to say."""
    try:
        active = _read_json(POINTER)["active"]
    except OSError:
        return "", []
    except (ValueError, KeyError, TypeError, MemoryError):
        active = None
    notes = [] if active in SLOTS else ["%s cannot be read: trying both app slots" % POINTER]
    order = [s for s in SLOTS if s == active] + [s for s in SLOTS if s != active]
    for s in order:
        p = problem(s)
        if p is None:
            if notes:
                notes.append("starting the app in %s instead; run `make deploy` again" % s)
            return s, notes
        notes.append("app slot %s cannot be used: %s" % (s, p))
    if _exists("start.mpy") or _exists("start.py"):
        notes.append("starting the app found at the top level instead")
        return "", notes
    return None, notes


def boot():
    """Once per boot, from boot.py (main.py calls it too: the unix runner has no boot.py): puts the
    app slot first on sys.path and starts the watchdog feeder. Never raises: a boot that fails
    here must still leave a usable REPL. -> the board module, or None."""
    global slot, version, _board, _booted
    if _booted:
        return _board
    _booted = True
    try:
        _probation()
        slot, notes = choose()
    except Exception as e:  # a damaged filesystem: say so, start nothing
        slot, notes = None, ["cannot read the filesystem: %s" % e]
    if trial is not None and slot != trial.get("slot"):
        globals()["trial"] = None  # the app on probation is not the one booting after all
    for n in notes:
        print("boot: " + n)
    if slot:
        sys.path.insert(0, _here(slot))
        try:
            version = _read_json(slot + "/" + MANIFEST).get("version")
        except Exception:
            pass
        print("boot: app %s from %s" % (version, slot))
    if slot is None:
        print("boot: no complete app is installed: run `make deploy`")
        return None
    try:
        import board
        _board = board.load()
    except Exception as e:
        print("boot: the app cannot start, its board module does not load: %r; run `make deploy`" % e)
        return None
    keep_alive()
    return _board


def _probation():
    # probation.py (beside this file, as stable) is in memory only when it has work: here, when
    # an update is confirmed or rolled back, and at a crash.
    try:
        import probation
        probation.at_boot()
        del sys.modules["probation"]
    except ImportError:  # installed by an older make deploy: no updates over the air yet
        pass


def rollback(why):
    import probation
    probation.rollback(why)


def keep_alive():
    """Whenever no app runs: the feeder keeps the watchdog fed, the REPL stays usable."""
    if _board:
        try:
            _board.start_feeder()
        except Exception as e:
            print("boot: cannot start the watchdog feeder: %r" % e)


def _prompt(text):
    # A reminder at every REPL prompt (each Enter), never inside mpremote's raw REPL exchanges.
    try:
        sys.ps1 = text + " >>> "
    except AttributeError:
        pass


def note_crash(e):
    """Count consecutive crashes in crash.log, with the last traceback. -> the count."""
    try:
        with open(CRASH_LOG) as f:
            n = int(f.read(32).split()[0])
    except (OSError, ValueError, IndexError):
        n = 0
    try:
        with open(CRASH_LOG, "w") as f:
            f.write("%d crashes in a row; the last one:\n" % (n + 1))
            sys.print_exception(e, f)
    except OSError:
        pass
    return n + 1


def main():
    """main.py: run the app from the booted slot until it stops, then decide what comes next."""
    b = boot()
    if b is None:  # boot() said why
        _prompt("[no app running]")
        return
    # The slot is chosen: that code goes, its heap is the app's (a fresh import has it again).
    g = globals()
    for name in ("problem", "choose", "boot", "restart", "_probation"):
        del g[name]
    try:
        import start
        if start.run(b) is False:  # the configuration cannot be used: start.safe_mode said why
            if trial is not None:
                rollback("its configuration cannot be used (safe mode)")
                b.reset()
            _prompt("[safe mode: config.json]")
            b.halt(SAFE_MODE)
    except KeyboardInterrupt:
        print("The app is stopped; the REPL is yours for as long as you need it.")
        print("Ctrl-D (soft reset) or RESET starts the app again.")
    except Exception as e:
        sys.print_exception(e)
        if trial is not None:  # an update that crashes is not given the crash policy's 3 tries
            rollback("it crashed: %r" % (e,))
            b.reset()
        n = note_crash(e)
        if n < GIVE_UP_AFTER:
            print("crashed: %r; restarting" % e)
            b.reset()
        # A restart loop helps nobody: stop here, reachable, and say why.
        print("=" * 60)
        print("The app crashed %d times in a row (the last time: %r):" % (n, e))
        print("it is stopped; the REPL stays available. The errors are in %s" % _here(CRASH_LOG))
        print("(mpremote fs cat :%s). After a fix, `make deploy`; RESET tries again." % CRASH_LOG)
        print("=" * 60)
        _prompt("[app stopped after %d crashes: see %s]" % (n, CRASH_LOG))
        b.halt(GAVE_UP)
    finally:
        keep_alive()


def restart():
    """Restart the board (used by `make deploy`/`make config` when they are done)."""
    b = boot()
    if b:
        b.reset()
    import machine
    machine.reset()
