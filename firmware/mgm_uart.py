# The MGM111 wire format (protocol.md "Framing"): 3-byte requests, and a streaming parser for the
# responses, which share the RX line with the module's log text and whatever noise it picks up.
# Runs on MicroPython and CPython. The parser allocates nothing per byte, per frame or per log line:
# one fixed buffer holds the frame being received (payloads are handed out as cached memoryviews
# into it), another the log line (handed out as the buffer and the line's bounds).
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

CMD_READING = const(0x72)  # 'r'
CMD_JOIN = const(0x6A)  # 'j'
CMD_MAC = const(0x6D)  # 'm'
CMD_INSTALL_CODE = const(0x69)  # 'i'
CMD_VERSION = const(0x66)  # 'f'
CMD_ERROR = const(0x65)  # 'e': unsolicited error message from the module

_START = const(0x24)  # '$'
_RESPONSE = const(0x01)
_END = const(0x0D)  # '\r'
_LF = const(0x0A)
FRAME_MAX = const(260)  # '$' 01 cmd len + 255 payload bytes + '\r'
# A longer MGM log line is cut here. A verbose module's received-message line ("T...:RX len 67, ep 01,
# clus 0x0702 (Simple Metering) FC 18 seq B7 cmd 01 payload[<64 bytes as hex>]") is ~280 chars.
LINE_MAX = const(300)
_VIEWS_KEPT = const(8)  # reading, version, MAC, install code, join, error: 6 lengths at most

REQUESTS = {}
for _c in (CMD_READING, CMD_JOIN, CMD_MAC, CMD_INSTALL_CODE, CMD_VERSION):
    REQUESTS[_c] = bytes((_START, _c, _END))


def request(cmd):
    """The 3 request bytes for cmd, built once: sending a poll allocates nothing."""
    r = REQUESTS.get(cmd)
    if r is None:
        if not 0 <= cmd <= 255:
            raise ValueError("command must be one byte")
        r = REQUESTS[cmd] = bytes((_START, cmd, _END))
    return r


def loglevel_request(level):
    """Text that changes how chatty the MGM's log is (20 = debug, 10 = normal)."""
    return b"loglevel %d\r" % level


# Everything the firmware may ever write to the MGM111 (protocol.md): the five requests, a lone CR
# (drain) and the two log levels. Commands that drop the meter pairing or print keys (leave, reset,
# printKeys, $d) are deliberately absent: Link.write refuses anything not listed, whoever asks.
ALLOWED = tuple(REQUESTS[c] for c in (CMD_READING, CMD_JOIN, CMD_MAC, CMD_INSTALL_CODE, CMD_VERSION)) + (
    b"\r", b"loglevel 10\r", b"loglevel 20\r")


def allowed(data):
    """True if data is exactly one of ALLOWED (compares without allocating)."""
    return data in ALLOWED


class FrameParser:
    """Feed it bytes in any chunking; it calls on_frame(cmd, payload) per complete frame and
    on_log(buf, start, end) per MGM log line.

    The payload memoryview points into the parser's buffer and is only valid during the call.
    A log line is buf[start:end]: buf is the parser's line bytearray (printable ASCII and tabs,
    leading and trailing blanks excluded, never empty, at most LINE_MAX long: a longer line is cut
    there and its tail dropped); like the payload it is only valid during the call (copy what you
    keep; str(memoryview(buf)[start:end], "ascii") makes a str). A frame in the middle of a log line
    does not cut it: the text on both sides is one line, as the module printed it.
    Callbacks should not raise: an exception propagates out of feed() and the rest of that chunk
    is lost (the parser's own state stays consistent).
    """

    def __init__(self, on_frame, on_log=None):
        self.on_frame = on_frame
        self.on_log = on_log
        self.buf = bytearray(FRAME_MAX)  # the pending frame, always starting with '$' at buf[0]
        self._mv = memoryview(self.buf)
        # Payload views by length, made once each for the few lengths the MGM uses; a length only
        # line noise produced gets a passing view instead of holding memory for good.
        self._views = {}
        self.line = bytearray(LINE_MAX)  # the MGM log line being received
        self.reset()

    def reset(self):
        """Forget everything pending and zero the counters (e.g. after re-creating the UART)."""
        self.n = 0  # bytes held in buf
        self.line_n = 0
        self._skip_line = False  # an overlong line was cut: ignore the rest of it
        self._lost = False  # garbage seen since the last good frame
        self.frames = 0
        self.garbage_bytes = 0
        self.truncated = 0
        self.bad_terminator = 0
        self.resyncs = 0  # times the parser found a good frame again after losing track
        self.log_lines = 0

    # --- input ---
    def feed(self, data, end=-1):
        """Parse data[:end] (all of it by default): the link passes its read buffer and a count,
        so no slice or memoryview is made per read."""
        buf = self.buf
        i = 0
        if end < 0:
            end = len(data)
        while i < end:
            n = self.n
            if n == 0:
                b = data[i]
                i += 1
                if b == _START:
                    buf[0] = b
                    self.n = 1
                else:
                    self._text(b)
                continue
            # Inside a candidate frame: copy as many bytes as it can still need, then judge it.
            if n >= 4:
                want = buf[3] + 5 - n
            else:
                want = 4 - n
            stop = i + want
            if stop > end:
                stop = end
            while i < stop:
                buf[n] = data[i]
                n += 1
                i += 1
            self.n = n
            self._settle()

    def idle(self):
        """The line has been quiet: a partial frame will never be completed, so drop it (and look
        for a frame start in what it had swallowed, which is then dropped for the same reason)."""
        while self.n:
            self.truncated += 1
            self._abandon()
            self._settle()
        # The MGM ends its log lines with \r\n: text still unterminated at a pause is the printable
        # part of a broken frame, not a log line.
        if self.line_n:
            self.garbage_bytes += self.line_n
            self.line_n = 0
        self._skip_line = False

    # --- internals ---
    def _settle(self):
        # Judge the held bytes as far as they allow: deliver a complete good frame, or abandon a
        # bad one and rescan what it held. Returns when buf is empty or holds a valid partial frame.
        buf = self.buf
        while self.n:
            n = self.n
            if n >= 2 and buf[1] != _RESPONSE:
                # '$' not followed by 01: not a frame, e.g. a '$' in the MGM's log text.
                self._drop(1, True)
                continue
            if n < 4:
                return
            total = buf[3] + 5
            if n < total:
                return
            if buf[total - 1] == _END:
                self._deliver(total)
            else:
                self.bad_terminator += 1
                self._abandon()

    def _deliver(self, total):
        plen = total - 5
        v = self._views.get(plen)
        if v is None:
            v = self._mv[4:4 + plen]
            if len(self._views) < _VIEWS_KEPT:
                self._views[plen] = v
        self.frames += 1
        if self._lost:
            self._lost = False
            self.resyncs += 1
        # A pending log line is kept: the module can print a frame in the middle of a line, whose
        # rest follows the frame (a received-message line must come out whole).
        try:
            self.on_frame(self.buf[2], v)
        finally:
            self._drop(total, False)

    def _abandon(self):
        # The '$' at buf[0] started no frame: it is garbage; its other bytes are scanned again,
        # so a good frame that a broken or lying one swallowed is still found.
        self.garbage_bytes += 1
        self._lost = True
        self._drop(1, False)

    def _drop(self, k, as_text):
        # Remove buf[0:k]; the bytes after it up to the next '$' are text or garbage; the rest
        # moves to the front as the new candidate frame.
        buf = self.buf
        n = self.n
        if as_text:
            for j in range(k):
                self._text(buf[j])
        j = k
        while j < n and buf[j] != _START:
            self._text(buf[j])
            j += 1
        if j < n:
            if j:
                self._mv[0:n - j] = self._mv[j:n]
            self.n = n - j
        else:
            self.n = 0

    def _text(self, b):
        # A byte outside any frame: MGM log text or garbage.
        if b == _END or b == _LF:
            if self.line_n:
                self._emit_line()
            self._skip_line = False
        elif 0x20 <= b < 0x7F or b == 0x09:
            if self._skip_line:
                return
            if self.line_n == LINE_MAX:
                self._emit_line()
                self._skip_line = True  # the tail of an overlong line is dropped
                return
            self.line[self.line_n] = b
            self.line_n += 1
        else:
            # Binary noise: the partial line around it was noise too.
            self.garbage_bytes += 1 + self.line_n
            self.line_n = 0
            self._skip_line = False
            self._lost = True

    def _emit_line(self):
        # Only printable ASCII gets into self.line. Handed out in place: no str per line.
        line = self.line
        a = 0
        b = self.line_n
        self.line_n = 0
        while a < b and line[a] in (0x20, 0x09):
            a += 1
        while b > a and line[b - 1] in (0x20, 0x09):
            b -= 1
        if b > a:
            self.log_lines += 1
            if self.on_log is not None:
                self.on_log(line, a, b)
