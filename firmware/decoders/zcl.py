# MGM firmware v7/v8 reading: a ZCL Read Attributes Response of the Simple Metering cluster
# (protocol.md). Records are walked by the payload length, never by fixed offsets, because meters
# leave attributes out (status 0x86) or add ones we do not use.
from . import DecodeError, check_scale, scale, scale_total

FRAME_CONTROL = 0x18
READ_ATTRIBUTES_RESPONSE = 0x01

ATTR_IMPORT = 0x0000  # CurrentSummationDelivered, Wh
ATTR_EXPORT = 0x0001  # CurrentSummationReceived, Wh
ATTR_MULTIPLIER = 0x0301
ATTR_DIVISOR = 0x0302
ATTR_DEMAND = 0x0400  # InstantaneousDemand, W, signed

# The attributes we use, by slot; _val/_status are reused by every decode (no allocation).
_ATTRS = (ATTR_IMPORT, ATTR_EXPORT, ATTR_MULTIPLIER, ATTR_DIVISOR, ATTR_DEMAND)
_NAMES = ("import", "export", "multiplier", "divisor", "power")
_IMP, _EXP, _MUL, _DIV, _DEM = 0, 1, 2, 3, 4
_val = [None] * 5  # the value; for the totals: its byte offset in the payload (scaled at the end)
_size = [0] * 5
_signed = [False] * 5
_status = [None] * 5  # status byte of a record without value; -1: value was the 'no value' marker
_NO_VALUE = -1


# The other fixed-size ZCL types, as (type, bytes) pairs: bool, enum8/16, semi/single/double float,
# time of day, date, UTC time, cluster id, attribute id, BACnet OID, IEEE address, 128-bit key.
# Bytes, not a dict: a 46-entry dict held ~1.5 KB of heap for the device's whole life.
_OTHER_SIZES = b"\x10\x01\x30\x01\x31\x02\x38\x02\x39\x04\x3a\x08\xe0\x04\xe1\x04\xe2\x04\xe8\x02" \
    b"\xe9\x02\xea\x04\xf0\x08\xf1\x10"


def type_size(t):
    """Bytes of a value of fixed-size ZCL data type t (so attributes we do not use can be
    skipped), or None for a type of variable or unknown size."""
    if 0x08 <= t <= 0x0F or 0x18 <= t <= 0x2F:
        return (t & 7) + 1  # data8..data64, bitmap8..64, uint8..64, int8..64
    s = _OTHER_SIZES
    for i in range(0, len(s), 2):
        if s[i] == t:
            return s[i + 1]
    return None


_STRINGS = (0x41, 0x42)  # octet and character string: 1-byte length first (0xFF = no value)


def _le(p, off, size):
    v = 0
    for i in range(off + size - 1, off - 1, -1):
        v = (v << 8) | p[i]
    return v


def _no_value(p, off, size, signed):
    """The ZCL 'no value' marker, checked on the bytes (no constant like 1 << 47, which on the ESP32
    would be a long int): unsigned all ones; signed the most negative number (0x80 00 .. 00)."""
    top = p[off + size - 1]
    if signed:
        if top != 0x80:
            return False
        for i in range(off, off + size - 1):
            if p[i]:
                return False
        return True
    if top != 0xFF:
        return False
    for i in range(off, off + size - 1):
        if p[i] != 0xFF:
            return False
    return True


def _slot(attr):
    for k in range(5):
        if _ATTRS[k] == attr:
            return k
    return -1


def _missing_text():
    parts = []
    for k in (_IMP, _EXP, _DEM):
        st = _status[k]
        if st == _NO_VALUE:
            parts.append("%s holds the 'no value' marker" % _NAMES[k])
        elif st is not None:
            parts.append("%s has status 0x%02X" % (_NAMES[k], st))
        else:
            parts.append("%s is absent" % _NAMES[k])
    return ", ".join(parts)


def decode(p, out):
    n = len(p)
    if n < 3 or p[0] != FRAME_CONTROL:
        raise DecodeError("not a ZCL reading: it must start 18 xx 01")
    if p[2] != READ_ATTRIBUTES_RESPONSE:
        raise DecodeError("ZCL command 0x%02X is not a Read Attributes Response (0x01)" % p[2])
    for k in range(5):
        _val[k] = None
        _status[k] = None
    i = 3
    while i < n:
        if i + 3 > n:
            raise DecodeError("ZCL record at byte %d is cut short (%d of 3 header bytes)"
                              % (i, n - i))
        attr = p[i] | (p[i + 1] << 8)
        status = p[i + 2]
        k = _slot(attr)
        i += 3
        if status != 0:
            if k >= 0:
                _status[k] = status
            continue
        if i >= n:
            raise DecodeError("ZCL record for attribute 0x%04X at byte %d has no data type"
                              % (attr, i - 3))
        t = p[i]
        i += 1
        size = type_size(t)
        if size is None and t in _STRINGS:
            if i >= n:
                raise DecodeError("ZCL string of attribute 0x%04X at byte %d is cut short"
                                  % (attr, i - 1))
            size = p[i]
            size = 1 if size == 0xFF else size + 1
        if size is None:
            raise DecodeError("unknown ZCL data type 0x%02X at byte %d (attribute 0x%04X): "
                              "the rest of the reading cannot be read" % (t, i - 1, attr))
        if k >= 0 and not (0x20 <= t <= 0x2F):
            raise DecodeError("ZCL attribute 0x%04X (%s) has data type 0x%02X at byte %d, "
                              "expected an integer" % (attr, _NAMES[k], t, i - 1))
        if i + size > n:
            raise DecodeError("ZCL value of attribute 0x%04X at byte %d is cut short (%d of %d "
                              "bytes)" % (attr, i, n - i, size))
        if k >= 0:
            signed = t >= 0x28
            if _no_value(p, i, size, signed):
                v = None
            elif k <= _EXP:
                v = i  # a total: scaled from its bytes once the multiplier and divisor are known
                _size[k] = size
                _signed[k] = signed
            else:
                v = _le(p, i, size)
                if signed and p[i + size - 1] & 0x80:
                    v -= 1 << (8 * size)  # only up to 24 bits here: small ints
            _val[k] = v
            _status[k] = _NO_VALUE if v is None else None
        i += size

    multiplier = _val[_MUL]
    divisor = _val[_DIV]
    if multiplier is None or divisor is None:
        raise DecodeError("cannot scale the ZCL reading: it has no %s" % (
            "multiplier and no divisor" if multiplier is None and divisor is None
            else ("multiplier" if multiplier is None else "divisor")))
    check_scale(multiplier, divisor)
    if _val[_IMP] is None and _val[_EXP] is None and _val[_DEM] is None:
        raise DecodeError("no usable value in the ZCL reading: " + _missing_text())
    out.format = "zcl"
    out.seq = p[1]
    out.multiplier = multiplier
    out.divisor = divisor
    if _val[_IMP] is not None:
        scale_total(out, "imp", p, _val[_IMP], _size[_IMP], False, _signed[_IMP], multiplier, divisor)
    if _val[_EXP] is not None:
        scale_total(out, "exp", p, _val[_EXP], _size[_EXP], False, _signed[_EXP], multiplier, divisor)
    if _val[_DEM] is not None:
        out.watts = scale(_val[_DEM], multiplier, divisor)
    return out
