# Decoders for the MGM111's answers (protocol.md): pure functions, no I/O, CPython and MicroPython.
# decode() recognises a reading payload by its shape, never by the MGM's version number, because
# versions 4 and 6 are undocumented: 152 bytes -> v2 layout; 18 xx 01 + records -> ZCL.
import binascii


class DecodeError(ValueError):
    """A payload that cannot be read; the message says why in plain words."""


class UnknownLayout(DecodeError):
    """Neither known shape (v2, ZCL): the meter talks, in a layout nobody has decoded yet."""


GIGA = 1000000000  # totals are two small ints: Wh = hi * GIGA + lo, 0 <= lo < GIGA


class Reading:
    """One decoded meter reading. None wherever the payload does not carry a value.

    Reused (decode(payload, out)) so a reading every few seconds allocates nothing new. Energy
    totals are kept as two small ints each (imp_hi/imp_lo, exp_hi/exp_lo, net_hi/net_lo: Wh = hi *
    10**9 + lo; lo is None when there is no value): on the ESP32 small ints have 31 bits, and a
    uint48 total above 2**30 Wh as one int would be a heap object every reading. import_wh,
    export_wh, net_wh and meter_ms give them as plain ints (for tools and tests: that allocates).
    """

    def __init__(self):
        self.clear()

    def clear(self):
        self.format = None  # 'v2' or 'zcl'
        self.watts = None  # instantaneous power, W; negative = export
        self.imp_hi = self.exp_hi = self.net_hi = 0
        self.imp_lo = None  # Wh taken from the grid (ZCL)
        self.exp_lo = None  # Wh sent to the grid (ZCL)
        self.net_lo = None  # v2's single net counter
        self.multiplier = None
        self.divisor = None
        self.seq = None  # ZCL sequence number
        self._ms_hi = None  # v2's free-running meter clock, 16 bits each
        self._ms_lo = 0

    @property
    def import_wh(self):
        return None if self.imp_lo is None else self.imp_hi * GIGA + self.imp_lo

    @import_wh.setter
    def import_wh(self, v):
        self.imp_hi, self.imp_lo = (0, None) if v is None else divmod(v, GIGA)

    @property
    def export_wh(self):
        return None if self.exp_lo is None else self.exp_hi * GIGA + self.exp_lo

    @export_wh.setter
    def export_wh(self, v):
        self.exp_hi, self.exp_lo = (0, None) if v is None else divmod(v, GIGA)

    @property
    def net_wh(self):
        return None if self.net_lo is None else self.net_hi * GIGA + self.net_lo

    @net_wh.setter
    def net_wh(self, v):
        self.net_hi, self.net_lo = (0, None) if v is None else divmod(v, GIGA)

    @property
    def meter_ms(self):
        return None if self._ms_hi is None else (self._ms_hi << 16) | self._ms_lo


# Scratch for scaled totals: the raw value's bytes, most significant first, with room for the
# product by multiplier * 1000 (at most 14 more bits). Module-level: decoding allocates nothing.
_X = bytearray(12)
MAX_HI = 0x3FFFFFFF  # the largest small int on the ESP32: hi is clipped there
_MAXHI = (MAX_HI - 255) >> 8


def scale_total(out, slot, p, off, size, big_endian, signed, multiplier, divisor):
    """Sets out's slot ("imp", "exp" or "net") to raw * multiplier * 1000 / divisor Wh, truncated
    toward zero, raw being `size` bytes of p at `off`, without any int above 2**30: long
    multiplication and division one byte (or half byte) at a time, then base 10**9 for the result.
    A value too large for any meter (over 1.07 * 10**18 Wh) is clipped to hi = MAX_HI."""
    x = _X
    n = len(x)
    for i in range(n - size):
        x[i] = 0
    for i in range(size):  # x[n - size:] = the raw value, most significant byte first
        x[n - size + i] = p[off + i] if big_endian else p[off + size - 1 - i]
    neg = signed and x[n - size] & 0x80
    if neg:  # two's complement: the magnitude
        carry = 1
        for i in range(n - 1, n - size - 1, -1):
            t = (x[i] ^ 0xFF) + carry
            x[i] = t & 0xFF
            carry = t >> 8
    # Integer factors first, so the usual divisors (1000, 1, 10, 100, 10000 ...) never divide.
    if divisor % 1000 == 0:
        m, d = multiplier, divisor // 1000
    elif 1000 % divisor == 0:
        m, d = multiplier * (1000 // divisor), 1
    else:
        m, d = multiplier * 1000, divisor
    if m != 1:
        carry = 0
        for i in range(n - 1, -1, -1):
            t = x[i] * m + carry
            x[i] = t & 0xFF
            carry = t >> 8
    if d != 1:  # by half bytes: the running remainder times 16 stays below 2**28 for uint24
        rem = 0
        for i in range(n):
            b = x[i]
            t = (rem << 4) | (b >> 4)
            q = t // d
            rem = t - q * d
            t = (rem << 4) | (b & 15)
            q2 = t // d
            rem = t - q2 * d
            x[i] = (q << 4) | q2
    # Base 10**9: three divisions by 1000 give lo, the rest is hi.
    lo = 0
    mul = 1
    for _ in range(3):
        rem = 0
        for i in range(n):
            t = (rem << 8) | x[i]
            q = t // 1000
            rem = t - q * 1000
            x[i] = q
        lo += rem * mul
        mul *= 1000
    hi = 0
    for i in range(n):
        if hi > _MAXHI:  # the next byte would pass 2**30: more than 10**18 Wh, no meter shows that
            hi = MAX_HI
            break
        hi = (hi << 8) | x[i]
    if neg:
        if lo:
            hi = -hi - 1
            lo = GIGA - lo
        else:
            hi = -hi
    if slot == "imp":
        out.imp_hi = hi
        out.imp_lo = lo
    elif slot == "exp":
        out.exp_hi = hi
        out.exp_lo = lo
    else:
        out.net_hi = hi
        out.net_lo = lo


def scale(raw, multiplier, divisor):
    """raw * multiplier * 1000 / divisor in whole W or Wh, truncated toward zero.

    The usual divisor 1000 (and other multiples or factors of 1000) skip the big intermediate
    product, which on a microcontroller would be a heap-allocated long int.
    """
    neg = raw < 0
    if neg:
        raw = -raw
    v = raw * multiplier
    if divisor == 1000:
        pass
    elif divisor % 1000 == 0:
        v //= divisor // 1000
    elif 1000 % divisor == 0:
        v *= 1000 // divisor
    else:
        v = v * 1000 // divisor
    return -v if neg else v


def check_scale(multiplier, divisor):
    if not 1 <= multiplier <= 10:
        raise DecodeError("implausible multiplier %d (expected 1 to 10): values would be wrong"
                          % multiplier)
    if divisor == 0:
        raise DecodeError("divisor is 0: values cannot be scaled")


def hex_bytes(b):
    return binascii.hexlify(bytes(b)).decode().upper()


# --- The module's log lines: which are received-message lines (decoders/mgm_log.py reads those,
# only in MGM log mode), and which may show a secret. Resident: every log line is judged, mode on
# or off, without allocating.
_RX = b"RX len"
_KEY = b"key"
_INSTALL = b"install"
_SECRET_RUN = 16  # hex digits in a row (blanks between them allowed) that may be a key or a code


def _hexval(c):
    if 0x30 <= c <= 0x39:
        return c - 0x30
    c |= 0x20
    if 0x61 <= c <= 0x66:
        return c - 0x57
    return -1


def _at(line, i, end, word, nocase=False):
    """line[i:] starts with word (no slice made); nocase: word is lower case, line any case."""
    k = len(word)
    if i + k > end:
        return False
    for j in range(k):
        c = line[i + j]
        if nocase and 0x41 <= c <= 0x5A:
            c |= 0x20
        if c != word[j]:
            return False
    return True


def rx_start(line, start, end):
    """Where "RX len" begins in a received-message line (after the "T<hex>:" timestamp the module
    may print first), or -1 for the module's other log text."""
    i = start
    if i < end and line[i] == 0x54:  # "T"
        j = i + 1
        while j < end and _hexval(line[j]) >= 0:
            j += 1
        if j > i + 1 and j < end and line[j] == 0x3A:
            i = j + 1
    return i if _at(line, i, end, _RX) else -1


def may_hold_secret(line, start, end):
    """True for a log line (not a received-message line) that may show a key or the install code:
    it names one ("key", "install"), or holds a long run of hex digits (16 or more, blanks between
    them allowed), as a key or code printout would. Such lines are never passed on as they are."""
    run = 0
    for i in range(start, end):
        c = line[i]
        if _hexval(c) >= 0:
            run += 1
            if run >= _SECRET_RUN:
                return True
        elif c != 0x20:
            run = 0
        lc = c | 0x20
        if lc == 0x6B and _at(line, i, end, _KEY, True):
            return True
        if lc == 0x69 and _at(line, i, end, _INSTALL, True):
            return True
    return False


# The layouts' code (v2.py, zcl.py) is imported when the first payload of that shape comes: a meter
# speaks one of them, and the other's code would hold heap for the device's whole life.
_layouts = [None, None]  # v2, zcl


def _layout(k):
    m = _layouts[k]
    if m is None:
        try:
            if k:
                from . import zcl as m
            else:
                from . import v2 as m
        except MemoryError:
            raise DecodeError("not enough free memory to load the %s decoder now" % ("ZCL" if k else "v2"))
        _layouts[k] = m
    return m


def decode(payload, out=None):
    """A reading payload (the bytes after 24 01 72 <len>) -> Reading, or DecodeError."""
    if out is None:
        out = Reading()
    else:
        out.clear()
    n = len(payload)
    zcl_header = n >= 3 and payload[0] == 0x18  # zcl.FRAME_CONTROL
    if n == 152 and not (zcl_header and payload[2] == 0x01):  # v2.LENGTH, zcl.READ_ATTRIBUTES_RESPONSE
        return _layout(0).decode(payload, out)
    if zcl_header:
        return _layout(1).decode(payload, out)
    raise UnknownLayout("unknown payload layout: %d bytes, starts %s (a v2 reading has 152 bytes, "
                      "a ZCL one starts 18 xx 01)" % (n, _start(payload)))


def _start(payload):
    head = hex_bytes(payload[:3])
    if not head:
        return "(empty)"
    return " ".join(head[i:i + 2] for i in range(0, len(head), 2))


def decode_version(payload):
    if len(payload) < 1:
        raise DecodeError("empty version answer")
    return payload[0]


def _reversed_bytes(payload, what):
    if len(payload) != 8:
        raise DecodeError("%s answer has %d bytes, expected 8" % (what, len(payload)))
    h = hex_bytes(payload)
    return [h[i:i + 2] for i in range(14, -1, -2)]


def decode_mac(payload):
    """8 bytes, least significant first -> '88:77:66:55:44:33:22:11'."""
    return ":".join(_reversed_bytes(payload, "MAC"))


def decode_install_code(payload):
    """8 bytes, reversed like the MAC -> hex string. A secret: never log or publish it."""
    return "".join(_reversed_bytes(payload, "install code"))
