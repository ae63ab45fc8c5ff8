"""Hostile MQTT input, end to end: the firmware under the real MicroPython unix port, a real
mosquitto, and a paho client in the role of Home Assistant (or whoever else can publish on the
broker). Whatever arrives, of any size, rate or content, retained or not, the firmware keeps
running, keeps publishing readings, changes nothing unless the command is valid, and says in
words what it refused."""
import json
import os
import re
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim_env
from test_soak import HEAP as SOAK_HEAP

BASE = "vue_utility/sim0001"
CMD = BASE + "/cmd/"


def numeric(p):
    try:
        int(p)
        return True
    except ValueError:
        return False


def refused_at_least(ha, n, timeout=20):
    """The diag once the firmware has counted n refusals (log lines are rate-limited, the count
    is not): also proves every message before was handled, as they are handled in order."""
    return ha.diag(lambda d: d.get("mqtt_refused", 0) >= n, timeout=timeout)


def assert_healthy(fw):
    out = fw.output
    assert fw.proc.poll() is None, "the firmware exited:\n" + out[-3000:]
    assert "Traceback" not in out and "MemoryError" not in out, out[-3000:]


def test_huge_messages_after_a_burst_are_drained_without_allocating_them(mgm, firmware, ha, tmp_path):
    # As deployed (.mpy) in a heap as small as the soak's: a 10 KB message after a burst of small
    # ones once raised an uncaught MemoryError, and three of them made the firmware give up.
    mpy = sim_env.compile_firmware(str(tmp_path / "mpy"))
    sim = mgm(8, speedup=600)
    fw = firmware(sim, heapsize=SOAK_HEAP, mpy_dir=mpy)
    ha.diag(lambda d: d["link"] == "ok")
    refused = 0
    for rnd in range(3):
        for i in range(200):
            ha.publish(CMD + "poll_interval", "x%d" % i)  # a burst of small (invalid) ones
        refused += 200
        for cmd in ("rejoin", "restart", "poll_interval", "raw_frames", "anything"):
            ha.publish(CMD + cmd, os.urandom(5000).hex())  # 10,000 bytes each
            refused += 1
        refused_at_least(ha, refused, timeout=30)
    for size in (100 * 1024, 1024 * 1024):
        ha.publish(CMD + "restart", b"P" * size)
        refused += 1
    d = refused_at_least(ha, refused, timeout=60)
    # Refused in words, with the topic, and drained rather than read into memory (the log is
    # rate-limited: a flood is summed up, naming the latest refusal).
    line = fw.wait_log(r"more refused in 10 s, not shown; the latest: MQTT message of \d+ bytes on "
                       r"%s/cmd/\w+ refused: larger than" % BASE)
    assert "drained, not read" in line
    assert d["poll_interval_s"] == 5 and d["raw_frames"] == "OFF"
    # Still connected (nothing was dropped to get rid of them) and readings still flowing.
    mark = ha.mark()
    ha.wait_topic("/power", numeric, after=mark)
    assert "MQTT connection lost" not in fw.output
    assert "command: restart" not in fw.output and "command: re-join" not in fw.output
    assert_healthy(fw)


def test_retained_commands_never_act_and_are_removed_but_retained_totals_are_restored(
        mgm, firmware, ha, broker, tmp_path):
    # Left on the broker by `mosquitto_pub -r`, Node-RED or an automation with retain: once, a
    # retained restart meant a reboot at every connect, for ever.
    for cmd, payload in (("restart", "PRESS"), ("rejoin", "PRESS"), ("poll_interval", "60"),
                         ("raw_frames", "ON")):
        ha.publish(CMD + cmd, payload, retain=True)
    # Our own retained total from "before the reboot": the one retained input that is wanted.
    ha.publish(BASE + "/energy/in", "123456789", retain=True)
    ha.publish(BASE + "/energy/out", "1000", retain=True)
    sim = mgm(2, speedup=3000)
    fw = firmware(sim)
    fw.wait_log("MQTT connected")
    for cmd in ("restart", "rejoin", "poll_interval", "raw_frames"):
        line = fw.wait_log("refused command %s=.*retained message" % cmd)
        assert "removed it from the broker" in line
    fw.wait_log("restored totals from the broker: in 123456789 Wh")
    d = ha.diag(lambda d: d["readings"] >= 3, timeout=30)
    assert d["poll_interval_s"] == 5 and d["raw_frames"] == "OFF"
    time.sleep(2)  # a restart would have come 1 s after the command
    assert "command:" not in fw.output, fw.output
    assert_healthy(fw)
    # Removed from the broker: a new subscriber gets no retained command (and the next boot no
    # refusal lines: nothing is left to refuse).
    from harness import HomeAssistant
    probe = HomeAssistant(broker.port)
    try:
        time.sleep(1)
        left = [(t, p) for t, p, r in probe.messages if t.startswith(CMD) and r]
        assert left == [], left
    finally:
        probe.stop()
    fw.stop()
    fw2 = firmware(sim, workdir=str(tmp_path / "fw2"))
    fw2.wait_log("MQTT connected")
    ha.diag(lambda d: d["readings"] >= 2, timeout=30, after=ha.mark())
    assert "retained message" not in fw2.output
    assert_healthy(fw2)


def test_rejoin_presses_are_rate_limited_and_must_be_what_the_button_sends(mgm, firmware, ha):
    sim = mgm(8)
    fw = firmware(sim)
    ha.diag(lambda d: d["link"] == "ok")
    time.sleep(1)
    joins = sim.joins
    for payload in ("1", "", "press", "PRESS ", "ON", "{\"press\": true}"):
        ha.publish(CMD + "rejoin", payload)
    refused_at_least(ha, 6)
    time.sleep(1)
    assert sim.joins == joins, "a payload that is not PRESS started a re-join"
    assert "command: re-join" not in fw.output
    fw.wait_log(r"refused command rejoin='1': expected PRESS")
    for _ in range(22):  # a stuck automation, or someone hammering the button
        ha.publish(CMD + "rejoin", "PRESS")
    refused_at_least(ha, 6 + 21)
    deadline = time.time() + 10
    while sim.joins == joins and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(2)
    assert sim.joins == joins + 1, "22 presses: %d re-joins" % (sim.joins - joins)
    assert fw.output.count("command: re-join the meter") == 1
    # In words (the log is rate-limited: this one may come in the summary of what was not shown).
    fw.wait_log(r"refused command rejoin='PRESS': too soon: at most one re-join a minute", timeout=15)
    assert_healthy(fw)


BAD_POLL = ["inf", "-inf", "nan", "NaN", "1e999", "1e2", "9" * 400, str(10 ** 30), "-5", "4", "301", "5.5",
            "0x10", "", "   ", "60s", "sixty", "\u0666\u0660", "６０", "60\x00", "\x1b[2J", "+60", "1_0"]


def test_bad_poll_intervals_are_refused_in_words(mgm, firmware, ha):
    sim = mgm(8)
    fw = firmware(sim)
    ha.diag(lambda d: d["link"] == "ok")
    for v in BAD_POLL:
        ha.publish(CMD + "poll_interval", v.encode())
    ha.publish(CMD + "poll_interval", b"\xff\xfe60")  # not even UTF-8
    d = refused_at_least(ha, len(BAD_POLL) + 1)
    assert d["poll_interval_s"] == 5
    # The first few in words (then rate-limited, and counted).
    fw.wait_log(r"refused command poll_interval='inf': expected a whole number of seconds from 5 to 300")
    fw.wait_log(r"refused command poll_interval='nan': expected a whole number")
    fw.wait_log(r"refused command poll_interval='1e999': expected a whole number")
    ha.publish(CMD + "poll_interval", "60")
    ha.diag(lambda d: d["poll_interval_s"] == 60)
    assert_healthy(fw)


# --- the class: arbitrary payloads of arbitrary size on every command topic -------------------

def _valid_poll(p):
    m = re.fullmatch(rb"[ \t\n\r\x0b\x0c]*([0-9]{1,3})(\.0*)?[ \t\n\r\x0b\x0c]*", p)
    return int(m.group(1)) if m and 5 <= int(m.group(1)) <= 300 else None


TOPICS = st.one_of(st.sampled_from(["rejoin", "restart", "poll_interval", "raw_frames"]),
                   st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=20))
PAYLOADS = st.one_of(
    st.binary(max_size=48),
    st.text(max_size=24).map(lambda s: s.encode()),
    st.sampled_from([b"PRESS", b"ON", b"OFF", b"5", b"60", b"300", b"60.0", b" 7 ", b"inf", b"nan", b"1e999",
                     b""]),
    st.integers(-10 ** 40, 10 ** 40).map(lambda i: str(i).encode()),
    st.floats().map(lambda f: repr(f).encode()),
    # big ones, cheaply: a short pattern repeated up to 300 KB
    st.tuples(st.integers(300, 300000), st.binary(min_size=1, max_size=8)).map(
        lambda t: (t[1] * (t[0] // len(t[1]) + 1))[:t[0]]),
)


@pytest.fixture
def session(mgm, firmware, ha):
    sim = mgm(8)
    fw = firmware(sim)
    ha.diag(lambda d: d["link"] == "ok")
    time.sleep(1)
    return sim, fw, ha, {"poll": 5, "raw": "OFF", "joins": sim.joins, "pressed": False}


@settings(max_examples=int(os.environ.get("MQTT_INPUT_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(cmd=TOPICS, payload=PAYLOADS, retain=st.booleans())
def test_arbitrary_commands_never_crash_and_change_nothing_unless_valid(session, cmd, payload, retain):
    sim, fw, ha, model = session
    if cmd == "restart" and payload == b"PRESS":
        return  # the one input that ends the process on purpose (tests/test_firmware_e2e.py)
    ha.publish(CMD + cmd, payload, retain=retain)
    # What it must do: only a valid command acts. (Published with retain while the firmware is
    # connected, it arrives live: MQTT 3.1.1 clears the flag for existing subscriptions. Only the
    # copy the broker keeps, handed over at the next connect, is flagged, and ignored: see above.)
    if cmd == "poll_interval" and _valid_poll(payload) is not None:
        model["poll"] = _valid_poll(payload)
    elif cmd == "raw_frames" and payload in (b"ON", b"OFF"):
        model["raw"] = payload.decode()
    elif cmd == "rejoin" and payload == b"PRESS":
        model["pressed"] = True
    # Then a valid command on another setting: once the diag shows it, the payload was handled.
    mark = ha.mark()
    if cmd == "poll_interval":
        model["raw"] = "ON" if model["raw"] == "OFF" else "OFF"
        ha.publish(CMD + "raw_frames", model["raw"])
        d = ha.diag(lambda d: d["raw_frames"] == model["raw"], after=mark, timeout=30)
    else:
        model["poll"] = 7 if model["poll"] != 7 else 8
        ha.publish(CMD + "poll_interval", str(model["poll"]))
        d = ha.diag(lambda d: d["poll_interval_s"] == model["poll"], after=mark, timeout=30)
    assert d["poll_interval_s"] == model["poll"] and d["raw_frames"] == model["raw"], \
        (cmd, payload, retain, d)
    assert sim.joins - model["joins"] <= (1 if model["pressed"] else 0), (cmd, payload, retain)
    assert "command: restart" not in fw.output
    assert "MQTT connection lost" not in fw.output, fw.output[-2000:]
    assert_healthy(fw)


# --- memory pressure in the MQTT path is a connection fault, not a crash ----------------------

SCRIPT = r"""
import asyncio
import sys
import mqtt

calls = [0]
real_fill = mqtt._Wire.fill


def fill(self):
    # Memory runs out in the MQTT path, twice, a few steps into the session.
    calls[0] += 1
    if calls[0] in (30, 31):
        raise MemoryError("memory allocation failed, allocating 10240 bytes")
    return real_fill(self)


mqtt._Wire.fill = fill
cfg = {"mqtt": {"host": "127.0.0.1", "port": int(sys.argv[1]), "tls": False, "user": None, "password": None,
                "keepalive_s": 10}}
connects = []


async def on_connect(mq):
    connects.append(1)
    mq.subscribe("t/#")
    print("RESULT connected", len(connects))


m = mqtt.Mqtt(cfg, "memtest", "t", lambda t, p, r: None, on_connect)


async def main():
    task = asyncio.create_task(m.run(lambda: True))
    for _ in range(100):
        await asyncio.sleep_ms(50)
        if len(connects) >= 2:
            break
    print("RESULT connects", len(connects))

asyncio.run(main())
"""


def test_memory_error_in_the_mqtt_path_is_a_reconnect_not_a_crash(broker, tmp_path):
    script = tmp_path / "mem.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([sim_env.FIRMWARE, sim_env.LIB, ".frozen"]))
    p = subprocess.run([sim_env.micropython() if hasattr(sim_env, "micropython") else "micropython",
                        str(script), str(broker.port)], cwd=str(tmp_path), env=env, capture_output=True,
                       text=True, timeout=30)
    out = p.stdout + p.stderr
    assert "MQTT connection lost (out of memory); reconnecting" in out, out
    assert "RESULT connects 2" in out, out
    assert "Traceback" not in out, out


# --- the reader itself: any stream of packets, split anywhere ---------------------------------
# mqtt.py's own fixed-header reader under the real MicroPython, fed a byte stream in arbitrary
# chunks (as TCP may deliver it): whole small messages are delivered once each, in order, with
# their retain flag; larger ones are refused and drained; acks and PINGRESPs are taken.

FRAMER = r"""
import sys, json, binascii
import mqtt

with open(sys.argv[1]) as f:
    job = json.load(f)
chunks = [binascii.unhexlify(c) for c in job["chunks"]]


class Sock:
    def readinto(self, buf):
        if not chunks:
            return None
        c = chunks[0]
        n = min(len(buf), len(c))
        buf[:n] = c[:n]
        if n < len(c):
            chunks[0] = c[n:]
        else:
            chunks.pop(0)
        return n

    def write(self, b):
        return len(b)

    def close(self):
        pass


got = []
cfg = {"mqtt": {"host": "h", "port": 1, "tls": False, "user": None, "password": None, "keepalive_s": 60}}
m = mqtt.Mqtt(cfg, "id", "t", lambda t, p, r: got.append([t, binascii.hexlify(p).decode(), r]), None)
m.wire.attach(Sock())
m.session = True
for pid in job["acks"]:
    m._acks[pid] = (0, "t/%d" % pid)
m._unanswered = 1
for _ in range(100000):
    m._input()
    if not chunks and m.wire.packet() is None:
        break
print(json.dumps({"got": got, "refusals": m.refusals, "acks_left": len(m._acks),
                  "pingresp": m._unanswered is None, "left": m.wire.i1 - m.wire.i0}))
"""


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(p):
    if p[0] == "pub":
        _, topic, payload, retain, qos = p
        t = topic.encode()
        body = len(t).to_bytes(2, "big") + t + (b"\x00\x07" if qos else b"") + payload
        return bytes([0x30 | (qos << 1) | retain]) + _varint(len(body)) + body
    if p[0] == "suback":
        return b"\x90\x03" + p[1].to_bytes(2, "big") + b"\x00"
    return b"\xd0\x00"


PACKETS = st.lists(st.one_of(
    st.tuples(st.just("pub"), st.text(alphabet="abc/_0123456789", min_size=1, max_size=60),
              st.one_of(st.binary(max_size=40), st.integers(0, 3000).map(lambda n: b"z" * n)),
              st.sampled_from([0, 1]), st.sampled_from([0, 0, 1])),
    st.tuples(st.just("suback"), st.integers(1, 65535)),
    st.tuples(st.just("pingresp"))), min_size=1, max_size=12)


@settings(max_examples=int(os.environ.get("MQTT_FRAMER_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(packets=PACKETS, cuts=st.lists(st.integers(1, 700), min_size=1, max_size=40))
def test_the_reader_frames_any_stream_split_anywhere(tmp_path, packets, cuts):
    stream = b"".join(_packet(p) for p in packets)
    chunks, i, k = [], 0, 0
    while i < len(stream):
        n = cuts[k % len(cuts)]
        chunks.append(stream[i:i + n].hex())
        i += n
        k += 1
    acks = sorted({p[1] for p in packets if p[0] == "suback"})
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"chunks": chunks, "acks": acks}))
    script = tmp_path / "framer.py"
    script.write_text(FRAMER)
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([sim_env.FIRMWARE, sim_env.LIB, ".frozen"]))
    r = subprocess.run([sim_env.micropython() if hasattr(sim_env, "micropython") else "micropython",
                        str(script), str(job)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stdout, r.stdout + r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    small = [p for p in packets if p[0] == "pub" and len(_packet(p)) <= 384]
    big = [p for p in packets if p[0] == "pub" and len(_packet(p)) > 384]
    assert res["got"] == [[p[1], p[2].hex(), bool(p[3])] for p in small]
    assert res["refusals"] == len(big)
    assert res["acks_left"] == 0 and res["left"] == 0
    assert res["pingresp"] == any(p[0] == "pingresp" for p in packets)
