# The MGM111 link on top of the board's UART: moves bytes into the FrameParser a bounded chunk at a
# time (so no loop step grows with what arrives), and offers request/answer with a timeout.
import time

try:
    import asyncio
except ImportError:  # pragma: no cover - only very old MicroPython
    import uasyncio as asyncio

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

from mgm_uart import FrameParser, allowed, loglevel_request, request

_QUIET_MS = const(20)  # the line counts as idle after this: a broken frame will not be completed


class Forbidden(ValueError):
    """Something other than mgm_uart.ALLOWED was about to be written to the MGM111."""


class Link:
    """on_frame(cmd, payload) and on_log(buf, start, end) as FrameParser hands them out."""

    def __init__(self, uart, on_frame, on_log=None):
        self.uart = uart
        self.on_frame = on_frame
        self.parser = FrameParser(self._frame, on_log)
        self.buf = bytearray(128)
        self.answers = {}  # cmd -> number of answers seen; lets ask() wait without allocating
        self.rx_bytes = 0
        self.last_rx = time.ticks_ms()
        self.last_answer = time.ticks_ms()
        self._idle = True

    def _frame(self, cmd, payload):
        self.answers[cmd] = self.answers.get(cmd, 0) + 1
        self.last_answer = time.ticks_ms()
        self.on_frame(cmd, payload)

    def poll(self, max_chunks=4):
        """Read what the UART holds (at most max_chunks * 128 bytes per call) into the parser."""
        now = time.ticks_ms()
        for _ in range(max_chunks):
            n = self.uart.readinto(self.buf)
            if not n:
                break
            self.rx_bytes += n
            self.last_rx = now
            self._idle = False
            self.parser.feed(self.buf, n)
        if not self._idle and time.ticks_diff(now, self.last_rx) > _QUIET_MS:
            self.parser.idle()
            self._idle = True

    def write(self, data):
        """The one place the firmware writes to the MGM111. Only mgm_uart.ALLOWED passes: a command
        that can drop the meter pairing or print keys (leave, reset, printKeys, $d) is refused
        with Forbidden, whatever code or MQTT message asked for it."""
        if not allowed(data):
            raise Forbidden("refused to send %r to the MGM111: only the requests $r $j $m $i $f, "
                            "a lone CR and loglevel 10/20 are ever sent" % (bytes(data[:24]),))
        self.uart.write(data)

    def send(self, cmd):
        self.write(request(cmd))

    def set_loglevel(self, level):
        """20: the module prints its received-message lines; 10: normal (protocol.md)."""
        self.write(loglevel_request(level))

    async def ask(self, cmd, timeout_ms):
        """Send one request; True once an answer to it has been parsed, False on timeout."""
        before = self.answers.get(cmd, 0)
        self.send(cmd)
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
            await asyncio.sleep_ms(5)
            if self.answers.get(cmd, 0) != before:
                return True
        return False

    async def drain(self, quiet_ms=200, max_ms=3000):
        """A lone CR ends whatever half-command the MGM holds; then read until the line is quiet."""
        self.write(b"\r")
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < max_ms:
            await asyncio.sleep_ms(20)
            if time.ticks_diff(time.ticks_ms(), self.last_rx) >= quiet_ms:
                break
        self.parser.idle()

    def reinit(self):
        self.uart.reinit()
        self.parser.reset()
