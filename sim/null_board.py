# A board with no hardware at all, for running app.App inside one MicroPython (or CPython) process:
# the benchmark and tests subclass the part they drive. Same shape as firmware/board/unix.py.
import board.unix as _unix
from board.unix import Leds, Watchdog  # noqa: F401 (no-ops there too)

NAME = "null"


class Uart:
    """Nothing arrives; what is written is counted."""

    def __init__(self, cfg):
        self.sent = 0

    def reinit(self):
        pass

    def readinto(self, buf):
        return 0

    def write(self, data):
        self.sent += len(data)


class Wifi(_unix.Wifi):
    def connected(self):
        return False  # no broker: publishes stay in the outbox


def unique_id():
    return "sim0001"


def reset():
    raise SystemExit(3)
