"""The simulated MGM111's own log (sim/mgm_sim.py, issue 13) as a client on its pty sees it: at
`loglevel 20` a received-message line per reading with the meter message's ZCL bytes (exactly the
`r` payload on v7/v8), versions 4 and 6 with an `r` layout nobody decodes, the log faults, and a
record of every byte the host wrote. Checked with the test's own strict parsing, not the firmware's."""
import re
import time

import pytest

from test_mgm_sim import CODE, Client, frames, one_frame, sim_client, until, zcl  # noqa: F401 (fixture)

RX = re.compile(rb"T([0-9A-F]{8}):RX len (\d+), ep ([0-9A-F]{2}), clus 0x([0-9A-F]{4}) \(([^)]*)\) "
                rb"FC ([0-9A-F]{2}) seq ([0-9A-F]{2}) cmd ([0-9A-F]{2}) payload\[((?:[0-9A-F]{2} )*)\]\r\n")


def rx_lines(raw):
    """(cluster, ZCL bytes) of every whole received-message line in raw."""
    out = []
    for m in RX.finditer(raw):
        z = bytes(int(m.group(g), 16) for g in (6, 7, 8)) + bytes.fromhex(m.group(9).decode())
        assert int(m.group(2)) == len(z)
        out.append((int(m.group(4), 16), z))
    return out


def poll(c, n=1, gap=0.03):
    out = b""
    for _ in range(n):
        out += c.ask("r")
        time.sleep(gap)
    return out


@pytest.mark.parametrize("version", [4, 6])
def test_v4_v6_answer_an_unreadable_layout_and_log_the_zcl_bytes(sim_client, version):
    sim, c = sim_client(version, speedup=600, start_hour=12, rx_other=0)
    assert one_frame(c.ask("f")) == ("f", bytes((version,)))
    assert b"RX len" not in poll(c)  # loglevel 10: no received-message lines
    c.send(b"loglevel 20\r")
    raw = poll(c, 3)
    payloads = [p for cmd, p in frames(raw) if cmd == "r"]
    assert len(payloads) == 3 and all(len(p) == 64 and p[:2] == b"\xa7\x04" for p in payloads)
    lines = rx_lines(raw)
    assert [cl for cl, _ in lines] == [0x0702] * 3 and raw.count(b"-- Got Meter Rsp, len=") == 3
    for (cl, z), m in zip(lines, sim.readings[-3:]):
        attrs, seq = zcl(z)
        assert seq == m["seq"]
        assert attrs[0x0000] == int(m["import_wh"]) and attrs[0x0001] == int(m["export_wh"])
        assert attrs[0x0400] == m["power_w"] and m["power_w"] < 0  # midday: export
        assert (attrs[0x0301], attrs[0x0302]) == (1, 1000)


def test_v8_logs_exactly_its_r_payload_and_other_clusters_sometimes(sim_client):
    sim, c = sim_client(8, speedup=600, rx_other=1.0)
    c.send(b"loglevel 20\r")
    raw = poll(c, 4)
    r = [p for cmd, p in frames(raw) if cmd == "r"]
    lines = rx_lines(raw)
    assert [z for cl, z in lines if cl == 0x0702] == r
    assert len([cl for cl, _ in lines if cl != 0x0702]) == 4
    # The line comes before the answer (the module received the meter's message, then answers).
    assert raw.index(b"RX len") < raw.index(b"$\x01r")
    assert [(s["cluster"], s["zcl"]) for s in sim.rx_sent] == lines


def test_v2_does_not_print_them_unless_asked(sim_client):
    sim, c = sim_client(2, speedup=600)
    c.send(b"loglevel 20\r")
    assert b"RX len" not in poll(c, 2)
    sim2, c2 = sim_client(2, speedup=600, rx_lines=True, rx_other=0)
    c2.send(b"loglevel 20\r")
    raw = poll(c2)
    (cl, z), = rx_lines(raw)
    attrs, _ = zcl(z)
    v2 = [p for cmd, p in frames(raw) if cmd == "r"][0]
    net = int.from_bytes(v2[4:8], "big")
    assert net == attrs[0x0000] - attrs[0x0001]  # the same meter message


def test_after_position_and_cut_and_split_lines(sim_client):
    sim, c = sim_client(8, speedup=600, rx_other=0, rx_position="after")
    c.send(b"loglevel 20\r")
    raw = poll(c)
    assert raw.index(b"$\x01r") < raw.index(b"RX len")
    sim.set_fault("rx_cut", count=1, keep=40)
    raw = poll(c)
    assert rx_lines(raw) == [] and b"RX len" in raw
    line = raw[raw.index(b"T"):]
    assert line.index(b"\r\n") == 40  # half a line, then its line end
    sim.set_fault("rx_split", count=1, at=30)
    sim.rx_position = "before"
    raw = poll(c)
    i = raw.index(b"$\x01r")
    frame_len = 4 + raw[i + 3] + 1
    joined = raw[:i] + raw[i + frame_len:]  # take the frame out of the line: the line is whole
    assert raw[i - 30:i].startswith(b"T") and len(rx_lines(joined)) == 1
    assert [s["cut"] for s in sim.rx_sent] == [False, True, False]
    assert [s["split"] for s in sim.rx_sent] == [False, False, True]


def test_mismatch_key_lines_and_ignore_loglevel(sim_client):
    sim, c = sim_client(8, speedup=600, rx_other=0)
    c.send(b"loglevel 20\r")
    sim.set_fault("rx_mismatch", count=1, delta=77)
    raw = poll(c)
    (_, z), = rx_lines(raw)
    r = [p for cmd, p in frames(raw) if cmd == "r"][0]
    assert zcl(z)[0][0x0400] == zcl(r)[0][0x0400] + 77
    sim.set_fault("key_lines", count=1)
    raw = poll(c)
    assert CODE.hex().upper().encode() in raw and b"NWK Key: " in raw
    assert [cl for cl, _ in rx_lines(raw)] == [0x0800, 0x0702]
    sim2, c2 = sim_client(8, speedup=600)
    sim2.set_fault("ignore_loglevel")
    c2.send(b"loglevel 20\r")
    assert b"RX len" not in poll(c2, 2) and sim2.loglevel == 10


def test_every_byte_received_is_kept_and_unsafe_commands_are_found(sim_client):
    sim, c = sim_client(8)
    c.send(b"\r")
    c.send(b"loglevel 20\r")
    c.ask("f")
    assert sim.unsafe_commands() == []
    c.send(b"leave\r")
    c.send(b"$d\r")
    c.send(b"printKeys")
    want = b"\rloglevel 20\r$f\rleave\r$d\rprintKeys"
    assert until(lambda: bytes(sim.received) == want), bytes(sim.received)
    assert sim.unsafe_commands() == [b"leave\r", b"$d\r", b"printKeys"]
