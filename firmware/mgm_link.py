# The MGM111 link on top of the board's UART: moves bytes into the FrameParser a bounded chunk at a
# time (so no loop step grows with what arrives), and offers request/answer with a timeout.
import time

try:
    import asyncio
except ImportError:  # pragma: no cover - only very old MicroPython
    import uasyncio as asyncio

from mgm_uart import FrameParser, request

QUIET_MS = 20  # the line counts as idle after this: a broken frame will not be completed


class Link:
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
        if not self._idle and time.ticks_diff(now, self.last_rx) > QUIET_MS:
            self.parser.idle()
            self._idle = True

    def send(self, cmd):
        self.uart.write(request(cmd))

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
        self.uart.write(b"\r")
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < max_ms:
            await asyncio.sleep_ms(20)
            if time.ticks_diff(time.ticks_ms(), self.last_rx) >= quiet_ms:
                break
        self.parser.idle()

    def reinit(self):
        self.uart.reinit()
        self.parser.reset()
