# What the ESP32 port does when it starts, for the simulated board (micropython_board.py), run as
# `micropython -i board_start.py` in the board's filesystem: boot.py, then main.py (not after a
# soft reset in the raw REPL), then the REPL (-i). Names are deleted: the REPL's globals are the
# ones boot.py and main.py leave, as on the board.
import os
import sys

# The board's sys.path, not this file's folder.
sys.path.clear()
sys.path.extend(["", ".frozen", "lib"])


def _board_run(name):
    try:
        with open(name) as f:
            src = f.read()
    except OSError:
        return
    try:
        exec(compile(src, name, "exec"), globals())
    except SystemExit:
        # On the board: machine.reset() from main.py. A script run with -i cannot end the
        # interpreter with sys.exit (it would drop to the REPL): end it as the watchdog does.
        import os
        import time
        os.system("kill -9 $PPID")
        time.sleep(5)
    except BaseException as e:  # as the board: the traceback, then on to the REPL
        import sys
        sys.print_exception(e)


_boot = os.getenv("VUE_BOOT") or "power-on"
if _boot != "power-on":
    sys.stdout.write("MPY: soft reboot\r\n")
_board_run("boot.py")
if _boot != "soft-raw":
    _board_run("main.py")
del _boot, _board_run, os, sys
