# Unix port (make sim, tests): the MGM111 is a simulator on a pseudo-terminal; no Wi-Fi, LEDs or WDT.
import os
import sys
import termios

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


class Leds:
    def __init__(self, cfg):
        self.state = {}

    def set(self, name, on):
        self.state[name] = on


class Watchdog:
    def __init__(self, timeout_ms):
        pass

    def feed(self):
        pass


def unique_id():
    # Stable per simulated device; tests run several, each with its own broker.
    return os.getenv("VUE_DEVICE_ID") or "sim0001"


def reset():
    # The unix port has no reset: exit with a code the runner (tools/run_sim.py) restarts on.
    print("restart requested: exiting with status 3")
    sys.exit(3)
