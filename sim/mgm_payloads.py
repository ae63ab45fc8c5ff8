"""Encoders for MGM111 frames and payloads: the inverse of firmware/decoders.

Pure functions used by the tests and by the MGM simulator (sim/mgm_sim.py).
They follow ../shared/docs/protocol.md byte for byte and run on CPython and
MicroPython alike (no f-strings, no typing, struct only).
"""
import struct

V2_LEN = 152
V2_ENERGY_MISSING = 0          # also 0x00400000 is a "missing" marker
V2_POWER_MISSING = 0x800000

ZCL_FRAME_CONTROL = 0x18
ZCL_READ_ATTR_RESPONSE = 0x01
ZCL_UNSUPPORTED = 0x86


def frame(cmd, payload):
    """A whole response frame: 24 01 <cmd> <len> <payload> 0D."""
    payload = bytes(payload)
    if len(payload) > 255:
        raise ValueError("payload longer than 255 bytes cannot be framed")
    return b"$\x01" + bytes((cmd, len(payload))) + payload + b"\r"


def _v2_power(power_raw, negative):
    if power_raw is None:
        return V2_POWER_MISSING
    if power_raw >= 0:
        if power_raw >= 0x800000:
            raise ValueError("power too large for 24 bits")
        return power_raw
    if negative == "ones":
        # One's complement: the decoder computes value - 0xFFFFFF.
        return 0xFFFFFF + power_raw
    if negative == "signmag":
        if -power_raw >= 0x400000:
            raise ValueError("sign-magnitude magnitude must stay below 0x400000")
        return 0x800000 | -power_raw
    raise ValueError("negative must be 'ones' or 'signmag'")


def v2_payload(energy_raw=None, power_raw=None, multiplier=1, divisor=1000,
               meter_ms=0, negative="ones", constant=b"\xfb\xfb"):
    """The 152-byte MGM firmware v2 reading payload (offsets from protocol.md)."""
    p = bytearray(V2_LEN)
    struct.pack_into(">I", p, 4, V2_ENERGY_MISSING if energy_raw is None else energy_raw)
    p[47] = multiplier & 0xFF
    struct.pack_into(">H", p, 50, divisor & 0xFFFF)
    p[52:54] = bytes(constant)[:2]
    pw = _v2_power(power_raw, negative)
    p[57] = (pw >> 16) & 0xFF
    p[58] = (pw >> 8) & 0xFF
    p[59] = pw & 0xFF
    struct.pack_into("<I", p, 148, meter_ms & 0xFFFFFFFF)
    return bytes(p)


def _le(value, size):
    value &= (1 << (8 * size)) - 1
    out = bytearray(size)
    for i in range(size):
        out[i] = (value >> (8 * i)) & 0xFF
    return bytes(out)


def zcl_record(attr, type_id=None, value=None, size=0, status=0):
    """One Read Attributes Response record; status != 0 or value None -> no type/value."""
    if value is None or status:
        return _le(attr, 2) + bytes((status or ZCL_UNSUPPORTED,))
    return _le(attr, 2) + bytes((0, type_id)) + _le(value, size)


def zcl_payload(seq=0, import_raw=None, export_raw=None, multiplier=1,
                divisor=1000, demand_raw=None):
    """The ZCL Simple Metering payload of MGM firmware v7/v8, records in protocol.md's order.

    A None value gives a record with status 0x86 (unsupported attribute).
    """
    return (bytes((ZCL_FRAME_CONTROL, seq & 0xFF, ZCL_READ_ATTR_RESPONSE))
            + zcl_record(0x0000, 0x25, import_raw, 6)
            + zcl_record(0x0001, 0x25, export_raw, 6)
            + zcl_record(0x0301, 0x22, multiplier, 3)
            + zcl_record(0x0302, 0x22, divisor, 3)
            + zcl_record(0x0400, 0x2A, demand_raw, 3))


def mac_payload(mac):
    """'88:77:66:55:44:33:22:11' -> the 8 payload bytes 11 22 .. 88 (reversed)."""
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 8:
        raise ValueError("MAC must have 8 bytes")
    b = bytearray(int(x, 16) for x in parts)
    return bytes(reversed(b))


def install_code_payload(code):
    """Install code bytes as printed -> payload bytes (reversed, like the MAC)."""
    code = bytes(code)
    if len(code) != 8:
        raise ValueError("install code must be 8 bytes")
    return bytes(reversed(bytearray(code)))
