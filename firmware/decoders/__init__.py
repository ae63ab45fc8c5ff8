# Decoders for the MGM111's answers (protocol.md): pure functions, no I/O, CPython and MicroPython.
# decode() recognises a reading payload by its shape, never by the MGM's version number, because
# versions 4 and 6 are undocumented: 152 bytes -> v2 layout; 18 xx 01 + records -> ZCL.
import binascii


class DecodeError(ValueError):
    """A payload that cannot be read; the message says why in plain words."""


class Reading:
    """One decoded meter reading. None wherever the payload does not carry a value.

    Reused (decode(payload, out)) so a reading every few seconds allocates nothing new.
    """

    def __init__(self):
        self.clear()

    def clear(self):
        self.format = None  # 'v2' or 'zcl'
        self.watts = None  # instantaneous power, W; negative = export
        self.import_wh = None  # Wh taken from the grid (ZCL)
        self.export_wh = None  # Wh sent to the grid (ZCL)
        self.net_wh = None  # v2's single net counter
        self.multiplier = None
        self.divisor = None
        self.seq = None  # ZCL sequence number
        self.meter_ms = None  # v2's free-running meter clock


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


from . import v2, zcl  # noqa: E402 (they use DecodeError and scale from above)


def decode(payload, out=None):
    """A reading payload (the bytes after 24 01 72 <len>) -> Reading, or DecodeError."""
    if out is None:
        out = Reading()
    else:
        out.clear()
    n = len(payload)
    zcl_header = n >= 3 and payload[0] == zcl.FRAME_CONTROL
    if n == v2.LENGTH and not (zcl_header and payload[2] == zcl.READ_ATTRIBUTES_RESPONSE):
        return v2.decode(payload, out)
    if zcl_header:
        return zcl.decode(payload, out)
    raise DecodeError("unknown payload layout: %d bytes, starts %s (a v2 reading has 152 bytes, "
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
