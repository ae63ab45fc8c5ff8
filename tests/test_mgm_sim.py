"""The simulated MGM111 (sim/mgm_sim.py) as a client on its pty sees it: frames exactly as
protocol.md, realistic readings, and each fault doing what it says. A local strict parser is used
on purpose (not the firmware's), so a shared misunderstanding cannot hide."""
import os
import select
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "sim"))
from mgm_sim import MgmSim  # noqa: E402

MAC = "88:77:66:55:44:33:22:11"
CODE = bytes.fromhex("0102030405060708")


# ---------- a client and a strict little parser, independent of the firmware ----------
def until(pred, timeout=5.0):
    """pred() became true within timeout s (the simulator's thread may not have run yet)."""
    end = time.time() + timeout
    while not pred():
        if time.time() > end:
            return False
        time.sleep(0.01)
    return True


class Client:
    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)

    def send(self, data):
        for b in data:  # byte by byte: the simulator must reassemble split writes
            os.write(self.fd, bytes((b,)))
            time.sleep(0.0005)

    def read(self, quiet=0.08, limit=2.0, first=0.5):
        """Everything until the line has been quiet for `quiet` s, waiting up to `first` s for the
        first byte (a loaded machine may take that long to answer; "nothing" waits that long too)."""
        out = b""
        end = time.time() + limit
        while time.time() < end:
            r, _, _ = select.select([self.fd], [], [], quiet if out else max(first, quiet))
            if not r:
                break
            out += os.read(self.fd, 4096)
        return out

    def ask(self, cmd, **kw):
        self.send(b"$" + cmd.encode() + b"\r")
        return self.read(**kw)

    def close(self):
        os.close(self.fd)


def one_frame(raw):
    """raw must be exactly one response frame: returns (cmd char, payload)."""
    assert raw[:2] == b"$\x01", raw.hex()
    n = raw[3]
    assert len(raw) == 4 + n + 1, "length byte %d but %d bytes: %s" % (n, len(raw), raw.hex())
    assert raw[-1] == 0x0D, raw.hex()
    return chr(raw[2]), raw[4:-1]


def frames(raw):
    """All well-formed frames in a stream (junk around them skipped)."""
    out, i = [], 0
    while True:
        i = raw.find(b"$\x01", i)
        if i < 0 or i + 4 > len(raw):
            return out
        n = raw[i + 3]
        end = i + 4 + n
        if end < len(raw) and raw[end] == 0x0D:
            out.append((chr(raw[i + 2]), raw[i + 4:end]))
            i = end + 1
        else:
            i += 1


def zcl(payload):
    """Walk a ZCL Read Attributes Response by its length: {attr: value or 'status 0xNN'}, seq."""
    assert payload[0] == 0x18 and payload[2] == 0x01
    sizes = {0x25: 6, 0x22: 3, 0x2A: 3}
    out, i = {}, 3
    while i < len(payload):
        attr = payload[i] | payload[i + 1] << 8
        status = payload[i + 2]
        i += 3
        if status:
            out[attr] = "status 0x%02x" % status
            continue
        size = sizes[payload[i]]
        v = int.from_bytes(payload[i + 1:i + 1 + size], "little", signed=payload[i] == 0x2A)
        out[attr] = v
        i += 1 + size
    assert i == len(payload)
    return out, payload[1]


def v2(payload):
    assert len(payload) == 152
    pw = int.from_bytes(payload[57:60], "big")
    if pw == 0x800000:
        power = None
    elif pw & 0x800000 and pw & 0x400000:
        power = pw - 0xFFFFFF  # one's complement
    elif pw & 0x800000:
        power = -(pw & 0x7FFFFF)  # sign-magnitude
    else:
        power = pw
    return {"energy": int.from_bytes(payload[4:8], "big"), "power": power, "pw_raw": pw,
            "mult": payload[47], "div": int.from_bytes(payload[50:52], "big"), "const": payload[52:54],
            "ms": int.from_bytes(payload[148:152], "little")}


@pytest.fixture
def sim_client():
    made = []

    def make(version=8, **kw):
        kw.setdefault("mac", MAC)
        kw.setdefault("install_code", CODE)
        s = MgmSim(version=version, **kw)
        s.start()
        c = Client(s.path)
        made.append((s, c))
        return s, c
    yield make
    for s, c in made:
        c.close()
        s.stop()


# ---------- framing ----------
@pytest.mark.parametrize("version", [2, 7, 8, "unknown"])
def test_every_command_answers_one_exact_frame(sim_client, version):
    sim, c = sim_client(version)
    assert one_frame(c.ask("f")) == ("f", bytes((version if version != "unknown" else 4,)))
    # protocol.md: payload 11 .. 88 is MAC 88:..:11
    assert c.ask("m") == bytes.fromhex("24016d08" "1122334455667788" "0d")
    assert one_frame(c.ask("i")) == ("i", CODE[::-1])
    cmd, p = one_frame(c.ask("j"))
    assert cmd == "j" and len(p) == 1
    cmd, p = one_frame(c.ask("r"))
    assert cmd == "r"
    if version == 2:
        assert len(p) == 152
    elif version in (7, 8):
        rec, _ = zcl(p)
        assert len(p) == 44 and set(rec) == {0x0000, 0x0001, 0x0301, 0x0302, 0x0400}
    else:  # neither shape: not 152 bytes, not `18 xx 01`
        assert len(p) == 64 and not (p[0] == 0x18 and p[2] == 0x01)
    assert sim.requests == {"f": 1, "m": 1, "i": 1, "j": 1, "r": 1}
    assert sim.joins == 1
    assert [f[0] for f in sim.sent_frames] == ["f", "m", "i", "j", "r"]


def test_split_requests_lone_cr_and_loglevel(sim_client):
    sim, c = sim_client(8)
    c.send(b"$")
    time.sleep(0.05)
    c.send(b"f")
    time.sleep(0.05)
    assert c.read(quiet=0.05) == b""  # nothing until the CR
    c.send(b"\r")
    assert one_frame(c.read())[0] == "f"
    c.send(b"\r")  # a lone CR (drain) answers nothing
    c.send(b"$\r")  # a half command ended by CR: ignored
    assert c.read() == b"" and until(lambda: sim.drains == 1)
    c.send(b"loglevel 20\r")
    assert c.read() == b"" and until(lambda: sim.loglevel == 20)
    # Debug level: the module now prints a log line before its answer.
    out = c.ask("f")
    text, frame = out.split(b"$", 1)
    assert text.endswith(b"\r\n") and text.decode("ascii")
    assert one_frame(b"$" + frame) == ("f", b"\x08")


# ---------- realistic readings ----------
def readings(c, n, gap=0.05):
    out = []
    for _ in range(n):
        out.append(one_frame(c.ask("r"))[1])
        time.sleep(gap)
    return out


def test_zcl_solar_noon_exports_and_counters_match_power(sim_client):
    sim, c = sim_client(8, speedup=3000, start_hour=11.5, zcl_seq=254)
    got = [zcl(p) for p in readings(c, 6)]
    recs = sim.readings
    assert [s for _, s in got] == [254, 255, 0, 1, 2, 3]  # +1 per reading, wraps
    for (r, _), m in zip(got, recs):
        assert r[0x0000] == int(m["import_wh"]) and r[0x0001] == int(m["export_wh"])
        assert r[0x0400] == m["power_w"] and r[0x0301] == 1 and r[0x0302] == 1000
    negatives = 0
    for (a, _), (b, _), ma, mb in zip(got, got[1:], recs, recs[1:]):
        assert b[0x0000] >= a[0x0000] and b[0x0001] >= a[0x0001]
        dt = mb["t"] - ma["t"]
        assert dt > 0
        # Counters advance by the reported power times the elapsed meter time.
        booked = (mb["import_wh"] - ma["import_wh"]) - (mb["export_wh"] - ma["export_wh"])
        assert booked == pytest.approx(mb["power_w"] * dt / 3600.0, abs=1e-6)
        if b[0x0400] < 0:
            negatives += 1
            assert b[0x0001] > a[0x0001] and b[0x0000] == a[0x0000]
    assert negatives >= 3, "solar noon should export"


def test_night_imports_only(sim_client):
    sim, c = sim_client(7, speedup=3000, start_hour=22)
    got = [zcl(p)[0] for p in readings(c, 4)]
    assert all(r[0x0400] > 0 for r in got)
    assert got[-1][0x0000] > got[0][0x0000] and got[-1][0x0001] == got[0][0x0001]
    for ma, mb in zip(sim.readings, sim.readings[1:]):
        assert mb["import_wh"] - ma["import_wh"] == pytest.approx(mb["power_w"] * (mb["t"] - ma["t"]) / 3600.0)


def test_v2_net_counter_and_both_negative_encodings(sim_client):
    sim, c = sim_client(2, speedup=3000, start_hour=11.5)
    got = [v2(p) for p in readings(c, 6)]
    for g, m in zip(got, sim.readings):
        assert g["energy"] == int(m["import_wh"]) - int(m["export_wh"])
        assert g["power"] == m["power_w"] < 0
        assert (g["mult"], g["div"], g["const"]) == (1, 1000, b"\xfb\xfb")
    tops = [g["pw_raw"] >> 22 for g in got]
    assert tops == [3, 2, 3, 2, 3, 2], "one's complement and sign-magnitude should alternate"
    assert all(b["energy"] < a["energy"] for a, b in zip(got, got[1:])), "net falls while exporting"
    ms = [g["ms"] for g in got]
    assert all(0 < (b - a) % (1 << 32) < 10 ** 7 for a, b in zip(ms, ms[1:]))


def test_v2_sign_magnitude_only_when_asked(sim_client):
    sim, c = sim_client(2, speedup=3000, start_hour=12, v2_negative="signmag")
    got = [v2(p) for p in readings(c, 3)]
    assert all(g["pw_raw"] >> 22 == 2 and g["power"] < 0 for g in got)


# ---------- faults ----------
def test_silence_answers_nothing_but_counts(sim_client):
    sim, c = sim_client(8)
    sim.set_fault("silence")
    for cmd in "fmijr":
        assert c.ask(cmd, quiet=0.05) == b""
    assert until(lambda: sim.requests == dict.fromkeys("fmijr", 1)) and sim.sent_frames == []
    sim.clear_faults()
    assert one_frame(c.ask("f"))[0] == "f"


def test_no_readings_still_answers_the_rest(sim_client):
    sim, c = sim_client(8)
    sim.set_fault("no_readings")
    assert c.ask("r", quiet=0.05) == b""
    for cmd in "fmij":
        assert one_frame(c.ask(cmd))[0] == cmd
    sim.clear_faults()
    assert one_frame(c.ask("r"))[0] == "r"


def test_garbage_surrounds_an_intact_frame(sim_client):
    sim, c = sim_client(8, seed=3)
    sim.set_fault("garbage", size=8)
    out = c.ask("r")
    good = b"$\x01r" + bytes((44,)) + sim.sent_frames[-1][1] + b"\r"
    i = out.find(good)
    assert i > 0 and len(out) > i + len(good), out.hex()


def test_log_text_lines_between_frames(sim_client):
    sim, c = sim_client(8)
    sim.set_fault("log_text", lines=2)
    out = c.ask("f")
    text, rest = out.split(b"$", 1)
    lines = text.split(b"\r\n")
    assert len(lines) == 3 and lines[2] == b"" and all(ln.decode("ascii") for ln in lines[:2])
    assert one_frame(b"$" + rest) == ("f", b"\x08")


def test_truncate_cuts_the_reading_then_nothing(sim_client):
    sim, c = sim_client(8)
    sim.set_fault("truncate", count=1)
    out = c.ask("r", quiet=0.15)
    assert out[:4] == b"$\x01r\x2c" and 4 < len(out) < 49 and frames(out) == []
    assert one_frame(c.ask("r"))[0] == "r"  # count=1: the next one is whole


def test_bad_terminator(sim_client):
    sim, c = sim_client(8)
    sim.set_fault("bad_terminator", byte=0x0A)
    out = c.ask("r")
    assert len(out) == 49 and out[3] == 44 and out[-1] == 0x0A and frames(out) == []


def test_lying_length(sim_client):
    sim, c = sim_client(8)
    for delta in (-9, 12):
        sim.set_fault("lying_length", delta=delta, count=1)
        out = c.ask("r")
        assert out[3] == 44 + delta and len(out) == 49 and out[-1] == 0x0D
        zcl(out[4:-1])  # the payload itself is sound


def test_duplicate_reading_sent_twice(sim_client):
    sim, c = sim_client(8)
    sim.set_fault("duplicate")
    out = c.ask("r")
    half = len(out) // 2
    assert out[:half] == out[half:] and one_frame(out[:half])[0] == "r"
    assert [f[0] for f in sim.sent_frames] == ["r", "r"]


def test_errors_are_unsolicited_e_frames(sim_client):
    sim, c = sim_client(8)
    sim.set_fault("errors", count=2, code=0x17)
    for _ in range(2):
        fs = frames(c.ask("r"))
        assert fs[0] == ("e", b"\x17") and fs[1][0] == "r"
    assert [f[0] for f in frames(c.ask("r"))] == ["r"]
    # Poor reception: errors keep coming even when readings do not.
    sim.set_fault("no_readings")
    sim.set_fault("errors", code=0x02)
    assert c.ask("r") == bytes.fromhex("24016501020d")


def test_wh_glitch_is_one_reading_then_normal(sim_client):
    sim, c = sim_client(8, speedup=600)
    a = zcl(one_frame(c.ask("r"))[1])[0][0]
    sim.set_fault("wh_glitch")  # one shot by default
    b = zcl(one_frame(c.ask("r"))[1])[0][0]
    d = zcl(one_frame(c.ask("r"))[1])[0][0]
    assert abs(b - a) > 100000 and 0 <= d - a < 2000


def test_wh_glitch_v2_stays_a_valid_value(sim_client):
    sim, c = sim_client(2, speedup=600)
    a = v2(one_frame(c.ask("r"))[1])["energy"]
    sim.set_fault("wh_glitch")
    b = v2(one_frame(c.ask("r"))[1])["energy"]
    d = v2(one_frame(c.ask("r"))[1])["energy"]
    assert abs(b - a) > 100000 and b < 0x00400000 and abs(d - a) < 2000


def test_wh_step_stays_at_the_new_level(sim_client):
    sim, c = sim_client(8, speedup=600)
    a = zcl(one_frame(c.ask("r"))[1])[0]
    sim.set_fault("wh_step")
    after = [zcl(one_frame(c.ask("r"))[1])[0] for _ in range(3)]
    assert a[0] > 1000000
    assert 100000 <= after[0][0] < 102000 and after[0][1] < 2000
    assert after[0][0] <= after[1][0] <= after[2][0] < 102000


def test_missing_fields(sim_client):
    sim, c = sim_client(8)
    sim.set_fault("missing", count=1)
    p = one_frame(c.ask("r"))[1]
    rec, _ = zcl(p)
    assert rec[0x0000] == rec[0x0400] == "status 0x86" and len(p) == 44 - 7 - 4
    assert isinstance(rec[0x0001], int)
    sim.set_fault("missing", fields=["multiplier", "divisor"], count=1)
    rec, _ = zcl(one_frame(c.ask("r"))[1])
    assert rec[0x0301] == rec[0x0302] == "status 0x86"


def test_missing_v2_markers(sim_client):
    sim, c = sim_client(2)
    sim.set_fault("missing")
    got = [v2(one_frame(c.ask("r"))[1]) for _ in range(2)]
    assert sorted(g["energy"] for g in got) == [0, 0x00400000]
    assert all(g["pw_raw"] == 0x800000 for g in got)


def test_dollar_bytes_inside_payloads(sim_client):
    sim, c = sim_client(8, speedup=600)
    sim.set_fault("dollar", count=1)
    cmd, p = one_frame(c.ask("r"))
    rec, seq = zcl(p)
    assert seq == 0x24 and p[1:3] == b"$\x01"  # a `$ 01` inside the payload
    assert rec[0x0000] & 0xFF == 0x24 and rec[0x0400] & 0xFF == 0x24
    assert zcl(one_frame(c.ask("r"))[1])[1] == 0x25
    sim2, c2 = sim_client(2, speedup=600)
    sim2.set_fault("dollar")
    p = one_frame(c2.ask("r"))[1]
    assert v2(p)["const"] == b"$\x01"


def test_count_probability_and_several_faults_at_once(sim_client):
    sim, c = sim_client(8, seed=1)
    sim.set_fault("duplicate", probability=0)
    sim.set_fault("errors", count=1, code=1)
    sim.set_fault("garbage", count=1, size=4)
    out = c.ask("r")
    fs = frames(out)
    assert [f[0] for f in fs] == ["e", "r"] and len(out) > 6 + 49
    assert [f[0] for f in frames(c.ask("r"))] == ["r"]
    with pytest.raises(ValueError):
        sim.set_fault("no_such_fault")
    sim.clear_faults()
    assert sim.faults == {}


def test_unknown_version_payload_is_kept_stable_in_shape(sim_client):
    sim, c = sim_client("unknown", speedup=600)
    ps = readings(c, 3)
    assert all(len(p) == 64 and p[:2] == b"\xa7\x04" for p in ps)
    imp = [int.from_bytes(p[4:10], "big") for p in ps]
    assert imp == sorted(imp) and imp[0] > 0


# ---------- CLI ----------
def test_cli_link_commands_and_verbose(tmp_path):
    link = str(tmp_path / "mgm0")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sim", "mgm_sim.py"), "--version", "7",
                             "--link", link, "--verbose", "--fault", "log_text:lines=1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, bufsize=1)
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/") and os.path.realpath(link) == path
        c = Client(link)
        out = c.ask("f")
        assert out.endswith(bytes.fromhex("24016601070d")) and out.count(b"\r\n") == 1
        assert "$f" in proc.stdout.readline()  # verbose: one line per request/answer
        proc.stdin.write("clear\n")
        assert "cleared" in proc.stdout.readline()
        proc.stdin.write("fault silence\n")
        assert "silence" in proc.stdout.readline()
        assert c.ask("f", quiet=0.1) == b""
        proc.stdout.readline()  # the verbose "(silence)" line
        proc.stdin.write("status\n")
        st = proc.stdout.readline()
        assert "MGM v7" in st and "silence" in st
        c.close()
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(5) == 0
        assert not os.path.lexists(link)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
