# The MGM111's own log (protocol.md "The MGM111's own command line"). At `loglevel 20` the module
# prints a line for every Zigbee message it receives:
#   T00000000:RX len 37, ep 01, clus 0x0702 (Simple Metering) FC 18 seq B7 cmd 01 payload[00 00 ...]
# FC, seq and cmd are the ZCL header and payload[...] the rest: together the message's ZCL bytes (for
# cluster 0x0702 exactly what a v7/v8 module answers to `r`). Pure, no I/O, CPython and MicroPython.
# parse() reads a slice of the link's line buffer and writes into the caller's RxLine: nothing is
# allocated per line (only a malformed received-message line raises, with its fault in words).
# Imported only in MGM log mode (meter_log.py) and by the tools: which log lines are received-message
# lines, and which may show a secret, is judged in decoders/__init__.py (resident, small).
from . import DecodeError, _at, _hexval, may_hold_secret, rx_start  # noqa: F401 (may_hold_secret: API)

SIMPLE_METERING = 0x0702
KEY_ESTABLISHMENT = 0x0800  # certificates and key material: its payload is never passed on
READ_ATTRIBUTES_RESPONSE = 0x01

_EP = b"ep"
_CLUS = b"clus"
_FC = b"FC"
_SEQ = b"seq"
_CMD = b"cmd"
_MFG = b"mfgId"
_PAYLOAD = b"payload["


class RxLine:
    """What parse() found in a received-message line; reused for every line.

    zcl[:n] holds the ZCL bytes: FC, the manufacturer code (2 bytes, little-endian) when the line
    shows one, seq, cmd, then the payload bytes."""

    def __init__(self, size=96):
        self.zcl = bytearray(size)
        self.view = memoryview(self.zcl)  # made once: callers hand out view and n, not a slice
        self.clear()

    def clear(self):
        self.n = 0
        self.length = -1  # the line's "len": ZCL bytes the module received
        self.endpoint = -1
        self.cluster = -1
        self.fc = -1
        self.mfg = -1  # manufacturer code, -1 when the line shows none
        self.seq = -1
        self.cmd = -1
        self.pos = 0  # parse position (kept here: returning it with the value would allocate)

    def is_reading(self):
        """A Simple Metering Read Attributes Response from the meter: the `r` payload's format."""
        fc = self.fc
        # Frame type global (bits 0-1 = 0), not manufacturer-specific (bit 2), server to client
        # (bit 3); bit 4 (disable default response) does not change the records.
        return (self.cluster == SIMPLE_METERING and self.cmd == READ_ATTRIBUTES_RESPONSE
                and fc & 0x0F == 0x08)


def _skip(line, rx, end):
    # Blanks and commas between fields.
    i = rx.pos
    while i < end and line[i] in (0x20, 0x2C, 0x09):
        i += 1
    rx.pos = i


def _number(line, rx, end, base, digits):
    """A number of at most `digits` digits at rx.pos (hex or decimal); -1 if none is there."""
    i = rx.pos
    stop = i + digits
    if stop > end:
        stop = end
    v = 0
    j = i
    while j < stop:
        d = _hexval(line[j])
        if d < 0 or d >= base:
            break
        v = v * base + d
        j += 1
    if j == i:
        return -1
    rx.pos = j
    return v


def _field(line, rx, end, name, base, digits, what):
    _skip(line, rx, end)
    if not _at(line, rx.pos, end, name):
        _bad(line, rx, end, "expected " + what)
    rx.pos += len(name)
    _skip(line, rx, end)
    v = _number(line, rx, end, base, digits)
    if v < 0:
        _bad(line, rx, end, "no value after '%s'" % str(name, "ascii"))
    return v


def _bad(line, rx, end, why):
    # Only malformed lines get here: the message may allocate.
    if rx.pos >= end:
        raise DecodeError("received-message line cut short (%s at its end)" % why)
    raise DecodeError("received-message line garbled at column %d: %s" % (rx.pos, why))


def parse(line, start, end, rx):
    """Read line[start:end] (bytes or bytearray) into rx.

    Returns the number of ZCL bytes (rx.zcl[:n]), or -1 if it is not a received-message line
    (the module's other log text). Raises DecodeError, saying why, for a received-message line that
    is cut short or garbled: its bytes are never half-used."""
    rx.clear()
    i = rx_start(line, start, end)  # after the module's timestamp, "T" + hex digits + ":"
    if i < 0:
        return -1
    rx.pos = i + 6  # len("RX len")
    _skip(line, rx, end)
    length = _number(line, rx, end, 10, 3)
    if length < 0:
        _bad(line, rx, end, "no number after 'RX len'")
    rx.length = length
    rx.endpoint = _field(line, rx, end, _EP, 16, 2, "'ep' (the endpoint)")
    _skip(line, rx, end)
    if not _at(line, rx.pos, end, _CLUS):
        _bad(line, rx, end, "expected 'clus' (the cluster)")
    rx.pos += len(_CLUS)
    _skip(line, rx, end)
    if _at(line, rx.pos, end, b"0x") or _at(line, rx.pos, end, b"0X"):
        rx.pos += 2
    cluster = _number(line, rx, end, 16, 4)
    if cluster < 0:
        _bad(line, rx, end, "no cluster number after 'clus'")
    rx.cluster = cluster
    _skip(line, rx, end)
    if rx.pos < end and line[rx.pos] == 0x28:  # "(Simple Metering)": the cluster's name
        j = rx.pos
        while j < end and line[j] != 0x29:
            j += 1
        rx.pos = j + 1
    # FC, seq, cmd (and mfgId on manufacturer-specific frames), then the payload.
    while True:
        _skip(line, rx, end)
        i = rx.pos
        if _at(line, i, end, _PAYLOAD):
            rx.pos = i + len(_PAYLOAD)
            break
        if _at(line, i, end, _FC):
            rx.fc = _field(line, rx, end, _FC, 16, 2, "")
        elif _at(line, i, end, _SEQ):
            rx.seq = _field(line, rx, end, _SEQ, 16, 2, "")
        elif _at(line, i, end, _CMD):
            rx.cmd = _field(line, rx, end, _CMD, 16, 2, "")
        elif _at(line, i, end, _MFG):
            rx.mfg = _field(line, rx, end, _MFG, 16, 4, "")
        else:
            _bad(line, rx, end, "expected FC, seq, cmd or payload[")
    if rx.fc < 0 or rx.seq < 0 or rx.cmd < 0:
        _bad(line, rx, end, "the ZCL header (FC, seq, cmd) is incomplete")
    out = rx.zcl
    k = 0
    out[k] = rx.fc
    k += 1
    if rx.mfg >= 0:
        out[k] = rx.mfg & 0xFF
        out[k + 1] = rx.mfg >> 8
        k += 2
    out[k] = rx.seq
    out[k + 1] = rx.cmd
    k += 2
    size = len(out)
    while True:
        _skip(line, rx, end)
        if rx.pos >= end:
            _bad(line, rx, end, "no closing ']' after %d payload bytes" % (k - 3))
        if line[rx.pos] == 0x5D:  # ']'
            break
        v = _number(line, rx, end, 16, 2)
        if v < 0:
            _bad(line, rx, end, "not a hex byte in payload[...]")
        if k >= size:
            raise DecodeError("received-message line holds more than %d ZCL bytes" % size)
        out[k] = v
        k += 1
    if k != length:
        raise DecodeError("received-message line says len %d but holds %d ZCL bytes (cut or garbled)"
                          % (length, k))
    rx.n = k
    return k


def parse_text(text, size=255):
    """A log line as text (tools, CPython): -> (cluster, ZCL bytes), or None for other log text.
    Raises DecodeError like parse()."""
    b = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    b = b.strip()
    rx = RxLine(size)
    n = parse(b, 0, len(b), rx)
    if n < 0:
        return None
    return rx.cluster, bytes(rx.zcl[:n])
