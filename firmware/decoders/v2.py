# MGM firmware v2 reading: a 152-byte block at fixed offsets, mixed byte order (protocol.md).
from . import DecodeError, check_scale, scale, scale_total

LENGTH = 152
ENERGY_MISSING = 0x00400000  # like 0: "missing"; anything above has only been seen as junk
POWER_MISSING = 0x800000


def _be(p, off, size):
    v = 0
    for i in range(off, off + size):
        v = (v << 8) | p[i]
    return v


def decode(p, out):
    if len(p) != LENGTH:
        raise DecodeError("v2 reading must be %d bytes, got %d" % (LENGTH, len(p)))
    multiplier = p[47]
    divisor = _be(p, 50, 2)
    check_scale(multiplier, divisor)
    out.format = "v2"
    out.multiplier = multiplier
    out.divisor = divisor
    out._ms_lo = p[148] | (p[149] << 8)  # 32 bits as two halves: no long int on the ESP32
    out._ms_hi = p[150] | (p[151] << 8)

    # Checked on the bytes: a 32-bit counter read as one int would be a long int on the ESP32.
    usable = p[4] == 0 and p[5] < 0x40 and (p[5] or p[6] or p[7])
    if usable:
        scale_total(out, "net", p, 4, 4, True, False, multiplier, divisor)

    power = _be(p, 57, 3)
    if power == POWER_MISSING:
        if not usable:  # messages are built only here, so a normal reading allocates nothing
            energy = _be(p, 4, 4)
            if energy > ENERGY_MISSING:
                why = "energy counter 0x%08X is above 0x00400000, which only junk readings show"
            else:
                why = "energy counter says missing (0x%08X)"
            raise DecodeError(("no usable value in the v2 reading: " + why
                               + " and power says missing (0x800000)") % energy)
    else:
        if power & 0x800000:
            if power & 0x400000:
                power -= 0xFFFFFF  # one's complement
            else:
                power = -(power & 0x7FFFFF)  # sign and magnitude
        out.watts = scale(power, multiplier, divisor)
    return out
