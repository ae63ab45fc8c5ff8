# MGM firmware v7/v8 reading: a ZCL Read Attributes Response of the Simple Metering cluster
# (protocol.md). Records are walked by the payload length, never by fixed offsets, because meters
# leave attributes out (status 0x86) or add ones we do not use.
from . import DecodeError, check_scale, scale

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
_val = [None] * 5
_status = [None] * 5  # status byte of a record without value; -1: value was the 'no value' marker
_NO_VALUE = -1


def _fixed_sizes():
    # Standard ZCL fixed-size types, so attributes we do not use can be skipped.
    s = {0x10: 1, 0x30: 1, 0x31: 2, 0x38: 2, 0x39: 4, 0x3A: 8, 0xE0: 4, 0xE1: 4, 0xE2: 4,
         0xE8: 2, 0xE9: 2, 0xEA: 4, 0xF0: 8, 0xF1: 16}
    for k in range(8):
        s[0x08 + k] = k + 1  # data8..data64
        s[0x18 + k] = k + 1  # bitmap8..bitmap64
        s[0x20 + k] = k + 1  # uint8..uint64
        s[0x28 + k] = k + 1  # int8..int64
    return s


SIZES = _fixed_sizes()
_STRINGS = (0x41, 0x42)  # octet and character string: 1-byte length first (0xFF = no value)


def _le(p, off, size):
    v = 0
    for i in range(off + size - 1, off - 1, -1):
        v = (v << 8) | p[i]
    return v


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
        size = SIZES.get(t)
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
            v = _le(p, i, size)
            top = 1 << (8 * size - 1)
            if t >= 0x28:  # signed: the ZCL 'no value' marker is the most negative number
                if v == top:
                    v = None
                elif v & top:
                    v -= top << 1
            elif v == (top << 1) - 1:  # unsigned: all ones is the 'no value' marker
                v = None
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
        out.import_wh = scale(_val[_IMP], multiplier, divisor)
    if _val[_EXP] is not None:
        out.export_wh = scale(_val[_EXP], multiplier, divisor)
    if _val[_DEM] is not None:
        out.watts = scale(_val[_DEM], multiplier, divisor)
    return out
