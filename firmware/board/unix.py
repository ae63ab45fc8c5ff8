# Unix port (make sim, tests): the MGM111 is a simulator on a pseudo-terminal; no Wi-Fi or LEDs; a
# watchdog that behaves as the ESP32's.
import os
import sys
import termios
import time

NAME = "unix"
_VTIME = 5
_VMIN = 6


class Uart:
    def __init__(self, cfg):
        self.path = cfg["uart"]["device"]
        self.f = None
        self.reinit()

    def reinit(self):
        if self.f:
            try:
                self.f.close()
            except OSError:
                pass
        self.f = open(self.path, "r+b")
        fd = self.f.fileno()
        termios.setraw(fd)
        # VMIN=0/VTIME=0: a read returns what is there instead of blocking until the buffer is full.
        attr = termios.tcgetattr(fd)
        attr[6][_VMIN] = 0
        attr[6][_VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attr)

    def readinto(self, buf):
        try:
            return self.f.readinto(buf) or 0
        except OSError:
            return 0

    def write(self, data):
        self.f.write(data)


class Wifi:
    """The host's network is always up; nothing to join."""

    def __init__(self, cfg):
        pass

    def start(self):
        pass

    def connected(self):
        return True

    def check(self):
        return True

    def rssi(self):
        return None

    def ip(self):
        return "127.0.0.1"

    def ssid(self):
        return None

    def mac(self):
        # Stable per simulated device, in the locally administered range (02:...).
        h = 0
        for c in unique_id():
            h = (h * 31 + ord(c)) & 0xFFFFFFFF
        return "02:00:%02x:%02x:%02x:%02x" % (h >> 24, (h >> 16) & 255, (h >> 8) & 255, h & 255)


class Leds:
    def __init__(self, cfg):
        self.state = {}

    def set(self, name, on):
        self.state[name] = on


# ---- watchdog: behaves as the ESP32's (board/esp32.py) so tests see what the device does ----
# Once started it cannot be stopped, and when it is not fed in time it resets the board: a thread
# ends the whole process with SIGKILL (a thread cannot sys.exit() the process, and a signal works
# even while the main thread is stuck in a C call). sim/run_sim.py and the simulated board
# (tests/devices/micropython_board.py) restart it, as the ESP32 restarts. The feeder stands for the
# ESP32's machine.Timer: it keeps the watchdog fed while no app runs (the REPL, mpremote pushes).
_wd = [0, 0, False]  # last feed (ticks_ms), timeout in ms (0: not started), feeder on


def _watch():
    wd = _wd
    while True:
        time.sleep_ms(20)
        if not wd[2] and time.ticks_diff(time.ticks_ms(), wd[0]) > wd[1]:
            print("watchdog: not fed for %d ms: resetting the board" % wd[1])
            os.system("kill -9 $PPID")  # sh's parent: this interpreter
            time.sleep_ms(1000)


def _start(timeout_ms):
    wd = _wd
    started = wd[1]
    wd[0] = time.ticks_ms()
    wd[1] = timeout_ms  # a new timeout, as machine.WDT(timeout=) reconfigures on the ESP32
    if not started:
        try:
            import _thread  # here, not at the top: null_board imports this module on ports without it
        except ImportError:
            print("watchdog: this MicroPython has no _thread: the watchdog is not emulated")
            return
        _thread.start_new_thread(_watch, ())
    # The simulated board keeps the watchdog running across a soft reset, as the ESP32 does:
    # it expects this file rewritten (the watchdog taken over) by the next boot.
    path = os.getenv("VUE_WDT_STATE")
    if path:
        with open(path, "w") as f:
            f.write("%d\n" % timeout_ms)


class Watchdog:
    """The app's handle: from now on the app feeds it itself, so a stuck app gets reset."""

    def __init__(self, timeout_ms):
        _start(timeout_ms)
        self.feed()
        _wd[2] = False  # the feeder stops

    def feed(self):
        _wd[0] = time.ticks_ms()


def start_feeder(timeout_ms=30000):
    """Keep the watchdog fed while no app runs; starts it (at timeout_ms) if it is not running."""
    if not _wd[1]:
        _start(timeout_ms)
    _wd[0] = time.ticks_ms()
    _wd[2] = True


def halt(status):
    """The app will not run again before a reset (safe mode 2, gave up 4). A board stays in its
    REPL with the feeder running; the unix port exits with `status`, unless it plays a board
    that has a REPL (the simulated board sets VUE_BOARD_REPL)."""
    if not os.getenv("VUE_BOARD_REPL"):
        sys.exit(status)


def unique_id():
    # Stable per simulated device; tests run several, each with its own broker.
    return os.getenv("VUE_DEVICE_ID") or "sim0001"


def reset():
    # The unix port has no reset: exit with a code the runner (sim/run_sim.py) restarts on.
    print("restart requested: exiting with status 3")
    sys.exit(3)
