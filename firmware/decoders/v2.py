# MGM firmware v2 reading: a 152-byte block at fixed offsets, mixed byte order (protocol.md).
from . import DecodeError, check_scale, scale

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
    out.meter_ms = p[148] | (p[149] << 8) | (p[150] << 16) | (p[151] << 24)

    energy = _be(p, 4, 4)
    usable = 0 < energy < ENERGY_MISSING
    if usable:
        out.net_wh = scale(energy, multiplier, divisor)

    power = _be(p, 57, 3)
    if power == POWER_MISSING:
        if not usable:  # messages are built only here, so a normal reading allocates nothing
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
