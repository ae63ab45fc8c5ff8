"""Encoder for the MGM111's received-message log lines (protocol.md, "The MGM111's own command
line"): the inverse of firmware/decoders/mgm_log.py.

    T00000000:RX len 37, ep 01, clus 0x0702 (Simple Metering) FC 18 seq B7 cmd 01 payload[00 ... ]

Used by the simulator (sim/mgm_sim.py) and the tests; CPython and MicroPython alike.
"""

CLUSTER_NAMES = {
    0x0000: "Basic",
    0x000A: "Time",
    0x0019: "Over the Air Bootloading",
    0x0700: "Price",
    0x0702: "Simple Metering",
    0x0703: "Messaging",
    0x0800: "Key Establishment",
}


def rx_line(cluster, zcl, ts=0, ep=1, name=True, mfg=None):
    """The text (no line end) a verbose module prints for a message whose ZCL bytes are zcl
    (FC, [manufacturer code LE if mfg], seq, cmd, payload)."""
    zcl = bytes(zcl)
    h = 5 if mfg is not None else 3
    if len(zcl) < h:
        raise ValueError("ZCL bytes need at least the header")
    label = ""
    if name:
        label = " (%s)" % CLUSTER_NAMES.get(cluster, "Unknown clus. [0x%04X]" % cluster)
    seq, cmd = zcl[h - 2], zcl[h - 1]
    head = "T%08X:RX len %d, ep %02X, clus 0x%04X%s FC %02X seq %02X cmd %02X" % (
        ts & 0xFFFFFFFF, len(zcl), ep, cluster, label, zcl[0], seq, cmd)
    if mfg is not None:
        head += " mfgId %04X" % mfg
    return head + " payload[" + "".join("%02X " % b for b in zcl[h:]) + "]"


def got_meter_rsp(zcl):
    """The line a v8 module prints after a Simple Metering response."""
    return "-- Got Meter Rsp, len=%d" % len(zcl)
