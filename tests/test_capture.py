"""tools/capture.py: terminal logs, a sniffed serial line and the firmware's MQTT debug topic all end
up in the one capture format that find_fields.py reads."""
import datetime
import json
import os
import select
import subprocess
import sys
import time
import tty

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import capture_format as cf  # noqa: E402
from mgm_payloads import frame, v2_payload, zcl_payload  # noqa: E402

TOOL = os.path.join(ROOT, "tools", "capture.py")
P1 = v2_payload(energy_raw=123456, power_raw=1414, meter_ms=1000)
P2 = v2_payload(energy_raw=123460, power_raw=-250, meter_ms=11000)
P3 = zcl_payload(seq=7, import_raw=1000000, export_raw=12345, demand_raw=-250)
INSTALL_CODE = bytes(range(0x31, 0x39))


def capture(*args, timeout=20):
    return subprocess.run([sys.executable, TOOL] + list(args), capture_output=True, text=True,
                          timeout=timeout)


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_log_one_long_line_with_frames_split_across_entries(tmp_path):
    f1, f2 = frame(0x72, P1).hex().upper(), frame(0x72, P2).hex().upper()
    version = frame(0x66, b"\x02").hex().upper()
    log = ('"2023-12-08 08:55:40",%s' % version
           + '"2023-12-08 08:55:46",%s' % f1[:100]           # one frame in two entries,
           + '"2023-12-08 08:55:46",%s' % f1[100:]           # same timestamp
           + '"2023-12-08 08:55:50",%s' % frame(0x69, INSTALL_CODE).hex().upper()
           + '"2023-12-08 08:55:51",2401720A0102'            # a truncated frame, then a new time
           + '"2023-12-08 08:55:55",%s' % f2[:50]           # a frame straddling a second
           + '"2023-12-08 08:55:56",%s' % f2[50:])
    src = tmp_path / "terminal.log"
    src.write_text(log)
    out = tmp_path / "cap.jsonl"
    r = capture("--log", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    recs = records(out)
    assert [(x["t"], x["hex"], x["mgm_version"]) for x in recs] == [
        ("2023-12-08T08:55:46", P1.hex(), 2), ("2023-12-08T08:55:56", P2.hex(), 2)]
    assert INSTALL_CODE.hex() not in out.read_text()  # only readings are kept: never the secret
    # find_fields reads it back, and would read the raw log as well.
    for path in (out, src):
        frames = cf.read_capture(str(path))
        assert [f.payload for f in frames] == [P1, P2]
        assert frames[0].time == datetime.datetime(2023, 12, 8, 8, 55, 46)


def test_log_one_frame_per_line(tmp_path):
    lines = ["2023-12-08 09:00:00.250 %s" % " ".join("%02X" % b for b in frame(0x72, P3)),
             "2023-12-08 09:00:01 MGM: some log text",
             '"2023-12-08 09:00:05",%s' % frame(0x72, P1).hex()]
    src = tmp_path / "lines.log"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cap.jsonl"
    r = capture("--log", str(src), "--mgm-version", "8", "-o", str(out))
    assert r.returncode == 0, r.stderr
    recs = records(out)
    assert [(x["t"], x["hex"], x["mgm_version"], x["src"]) for x in recs] == [
        ("2023-12-08T09:00:00.250", P3.hex(), 8, "log"), ("2023-12-08T09:00:05", P1.hex(), 8, "log")]


def test_log_without_frames_is_a_clear_error(tmp_path):
    src = tmp_path / "empty.log"
    src.write_text("nothing to see here\n2023-12-08 09:00:01 zz\n")
    r = capture("--log", str(src))
    assert r.returncode == 2
    assert "no timestamped reading frame" in r.stderr and "2401729800" in r.stderr
    assert "Traceback" not in r.stderr
    r = capture("--log", str(tmp_path / "missing.log"))
    assert r.returncode == 2 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def _wait_stderr(proc, needle, timeout=30):
    seen = ""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline()
            seen += line
            if needle in line:
                return seen
        if proc.poll() is not None:
            break
    raise AssertionError("capture.py did not say %r; stderr so far: %s" % (needle, seen))


def test_mqtt_debug_topic(tmp_path, broker):
    import paho.mqtt.client as mqtt
    out = tmp_path / "cap.jsonl"
    proc = subprocess.Popen([sys.executable, TOOL, "--mqtt", "127.0.0.1:%d" % broker.port,
                             "--count", "3", "-o", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _wait_stderr(proc, "subscribed")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        topic = "vue_utility/aabbccddeeff/debug/raw"
        msgs = [
            {"time": "2023-12-08T08:55:46Z", "uptime_ms": 5000, "mgm_version": 2, "cmd": "r",
             "hex": P1.hex()},
            "not json at all",
            {"time": None, "uptime_ms": 15000, "mgm_version": 2, "cmd": "r", "hex": P2.hex()},
            {"time": "2023-12-08T09:00:00Z", "uptime_ms": 25000, "mgm_version": 8, "cmd": "r",
             "hex": P3.hex()},
        ]
        before = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        for m in msgs:
            pub.publish(topic, m if isinstance(m, str) else json.dumps(m), qos=1).wait_for_publish(5)
        proc.wait(30)
        pub.loop_stop()
        pub.disconnect()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    recs = records(out)
    assert [(x["hex"], x["mgm_version"], x["uptime_ms"]) for x in recs] == [
        (P1.hex(), 2, 5000), (P2.hex(), 2, 15000), (P3.hex(), 8, 25000)]
    assert recs[0]["t"] == "2023-12-08T08:55:46Z" and "t_src" not in recs[0]
    # The device's clock was not set: the host's receive time stands in, marked as such.
    assert recs[1]["t_src"] == "host"
    host_t = cf.parse_time(recs[1]["t"])
    assert abs((host_t - before).total_seconds()) < 10
    assert recs[2]["topic"] == topic


def test_mqtt_broker_unreachable_is_a_clear_error(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = capture("--mqtt", "127.0.0.1:%d" % port, "--count", "1")
    assert r.returncode == 1 and "cannot connect" in r.stderr and "Traceback" not in r.stderr


def test_serial_sniffing_survives_garbage_and_text(tmp_path):
    master, slave = os.openpty()
    tty.setraw(slave)
    out = tmp_path / "cap.jsonl"
    proc = subprocess.Popen([sys.executable, TOOL, "--serial", os.ttyname(slave), "--count", "2",
                             "-o", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _wait_stderr(proc, "listening")
        stream = (b"\x00\xff garbage $\x01\x72\x05\x01\x02" + b"MGM log: joined\r\n"
                  + frame(0x66, b"\x07") + frame(0x69, INSTALL_CODE)
                  + b"\x24\x01\x72\x98\x00\x00" + b"\xaa\x55"   # a truncated reading, then noise
                  + frame(0x72, P1)[:60])
        os.write(master, stream)
        time.sleep(0.05)
        os.write(master, frame(0x72, P1)[60:] + b"noise\r\n" + frame(0x72, P3))
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    recs = records(out)
    assert [(x["hex"], x["mgm_version"], x["src"]) for x in recs] == [
        (P1.hex(), 7, "serial"), (P3.hex(), 7, "serial")]
    assert INSTALL_CODE.hex() not in out.read_text()


@pytest.mark.parametrize("content,needle", [
    ('{"t": "2023-12-08T08:55:46Z"}\n', 'needs the keys "t" and "hex"'),
    ('{"t": "yesterday", "hex": "00"}\n', "unreadable time"),
    (b"\x00\xff\xfe binary", "not text"),
])
def test_unreadable_capture_files(tmp_path, content, needle):
    p = tmp_path / "cap.jsonl"
    (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    with pytest.raises(cf.CaptureError) as e:
        cf.read_capture(str(p))
    assert needle in str(e.value) and cf.SAMPLE in str(e.value)


# ---------- the module's received-message lines (MGM log mode, issue 13) ----------
def record_from_sim(tmp_path, version=6, polls=60, gap=0.1, faults=(), **sim_kw):
    """A capture as an owner would record it: capture.py --serial on the line of a simulated MGM111
    that a host puts into `loglevel 20` and polls. -> (capture path, the stopped simulator)."""
    from mgm_sim import MgmSim
    sim_kw.setdefault("speedup", 1200)
    sim_kw.setdefault("start_hour", 5.0)  # night into the morning: import, then solar export
    sim = MgmSim(version=version, **sim_kw)
    sim.start()
    for name, params in faults:
        sim.set_fault(name, **params)
    out = tmp_path / "cap.jsonl"
    proc = subprocess.Popen([sys.executable, TOOL, "--serial", sim.path, "--count", str(polls),
                             "--duration", "30", "-o", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    fd = os.open(sim.path, os.O_WRONLY | os.O_NOCTTY)  # the host only writes: the sniffer reads
    try:
        _wait_stderr(proc, "listening")
        os.write(fd, b"loglevel 20\r")
        for _ in range(polls + 5):
            if proc.poll() is not None:
                break
            os.write(fd, b"$r\r")
            time.sleep(gap)
        proc.wait(15)
    finally:
        os.close(fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sim.stop()
    assert proc.returncode == 0, proc.stderr.read()
    return out, sim


def test_serial_sniff_records_the_received_message_lines_but_never_keys(tmp_path):
    code = bytes.fromhex("83FED3407A939723")
    out, sim = record_from_sim(tmp_path, polls=30, install_code=code, rx_other=0.4, rx_position="mixed",
                               faults=[("key_lines", {"count": 3}), ("rx_cut", {"probability": 0.2}),
                                       ("rx_split", {"probability": 0.3})])
    recs = records(out)
    r = [x for x in recs if "cmd" not in x]
    rx = [x for x in recs if x.get("cmd") == "rx"]
    assert [x["hex"] for x in r] == [p.hex() for c, p in sim.sent_frames if c == "r"][:len(r)]
    assert len(r) == 30
    # Every whole line is recorded with its exact ZCL bytes; cut ones are not (no half lines). The
    # capture stops at its 30th frame: the lines of the polls before that one are all in it (the
    # host polls on until the capture has exited: what comes after may or may not be).
    last = [k for k, (c, p) in enumerate(sim.sent_frames) if c == "r"][29]
    whole = [("%04x" % s["cluster"], s["zcl"].hex(), s["frames"]) for s in sim.rx_sent
             if not s["cut"] and s["cluster"] != 0x0800]
    got = [(x["cluster"], x["hex"]) for x in rx]
    assert got == [w[:2] for w in whole[:len(got)]] and len(got) >= sum(w[2] < last for w in whole)
    assert any(s["cut"] for s in sim.rx_sent) and any(s["split"] for s in sim.rx_sent)
    assert {x["cluster"] for x in rx} > {"0702"} and all(x["src"] == "serial" for x in rx)
    text = out.read_text().lower()
    assert code.hex() not in text and sim.network_key.hex() not in text and '"0800"' not in text


def test_mqtt_debug_topic_received_message_records(tmp_path, broker):
    import paho.mqtt.client as mqtt
    out = tmp_path / "cap.jsonl"
    proc = subprocess.Popen([sys.executable, TOOL, "--mqtt", "127.0.0.1:%d" % broker.port,
                             "--count", "2", "-o", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    z = zcl_payload(seq=0xB7, import_raw=318458, export_raw=None, demand_raw=440)
    try:
        _wait_stderr(proc, "subscribed")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        topic = "vue_utility/aabbccddeeff/debug/raw"
        msgs = [  # the firmware's shapes: an undecodable `r` payload, then the log line of it
            {"time": "2023-12-08T08:55:46Z", "uptime_ms": 5000, "mgm_version": 6, "cmd": "r",
             "hex": "a704" + "00" * 62, "error": "unknown payload layout"},
            {"time": "2023-12-08T08:55:46Z", "uptime_ms": 5003, "mgm_version": 6, "cmd": "rx",
             "cluster": "0702", "hex": z.hex()},
            {"time": "2023-12-08T08:55:47Z", "uptime_ms": 5100, "mgm_version": 6, "cmd": "rx",
             "cluster": "0800", "hex": "190500"},
            {"time": "2023-12-08T08:55:48Z", "uptime_ms": 5200, "mgm_version": 6, "cmd": "rx",
             "hex": "180101"},
            {"time": "2023-12-08T08:55:56Z", "uptime_ms": 15000, "mgm_version": 6, "cmd": "r",
             "hex": "a704" + "01" * 62},
        ]
        for m in msgs:
            pub.publish(topic, json.dumps(m), qos=1).wait_for_publish(5)
        proc.wait(30)
        pub.loop_stop()
        pub.disconnect()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert proc.returncode == 0, err  # --count 2 counts readings, not log lines
    recs = records(out)
    assert [(x.get("cmd"), x.get("cluster"), x["hex"][:6]) for x in recs] == [
        (None, None, "a70400"), ("rx", "0702", "18b701"), (None, None, "a70401")]
    assert recs[1]["uptime_ms"] == 5003 and recs[1]["mgm_version"] == 6
    assert "key material" in err and 'without its "cluster"' in err
    rx = cf.read_rx(str(out))
    assert [(x.cluster, x.zcl) for x in rx] == [(0x0702, z)]
    assert [f.payload[:2] for f in cf.read_capture(str(out))] == [b"\xa7\x04"] * 2


def test_terminal_logs_with_received_message_lines(tmp_path):
    from mgm_lines import rx_line
    z = zcl_payload(seq=0xB7, import_raw=318458, export_raw=None, demand_raw=440)
    text = rx_line(0x0702, z)
    # A sniffer's hex log holds the module's text as bytes, between frames.
    stream = (text[:50] + "\r\n").encode()  # a cut line first: not recorded
    stream += (text + "\r\n").encode() + frame(0x72, P1)
    hexlog = '"2023-12-08 08:55:46",%s' % stream.hex().upper()
    # A text terminal: one timestamped line each.
    textlog = "2023-12-08 09:00:01 %s\n2023-12-08 09:00:02 -- Got Meter Rsp, len=37\n" % text
    for name, log, want_r in (("hex.log", hexlog, 1), ("text.log", textlog, 0)):
        src = tmp_path / name
        src.write_text(log)
        out = tmp_path / (name + ".jsonl")
        r = capture("--log", str(src), "--mgm-version", "6", "-o", str(out))
        assert r.returncode == 0, r.stderr
        recs = records(out)
        assert [x for x in recs if x.get("cmd") == "rx"] == [
            {"t": "2023-12-08T08:55:46" if want_r else "2023-12-08T09:00:01", "cmd": "rx",
             "cluster": "0702", "hex": z.hex(), "mgm_version": 6, "src": "log"}]
        assert len(recs) == 1 + want_r
        assert "1 received-message lines" in r.stderr
