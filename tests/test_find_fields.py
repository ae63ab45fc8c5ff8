"""tools/find_fields.py recovers hidden payload layouts from a capture and the vendor's CSV."""
import datetime
import json
import os
import random
import struct
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import capture_format as cf  # noqa: E402
import find_fields  # noqa: E402
from mgm_payloads import v2_payload  # noqa: E402

START = datetime.datetime(2023, 12, 8, 8, 0, 0)
TOOL = os.path.join(ROOT, "tools", "find_fields.py")


def power_trace(rng, seconds):
    """Watts per second: appliances switching every few seconds, solar export some of the time."""
    out = []
    level = 1000
    while len(out) < seconds:
        level = rng.choice([rng.randint(-3000, -100), rng.randint(100, 6000), rng.randint(200, 900)])
        for _ in range(rng.randint(3, 30)):
            out.append(level + rng.randint(-15, 15))
    return out[:seconds]


class Meter:
    """The truth behind a capture: power per second, and the import/export counters (Wh)."""

    def __init__(self, rng, seconds, import_wh=1245000.0, export_wh=4321.0):
        self.p = power_trace(rng, seconds)
        self.imp, self.exp = [], []
        for w in self.p:
            self.imp.append(import_wh)
            self.exp.append(export_wh)
            import_wh += max(w, 0) / 3600.0
            export_wh += max(-w, 0) / 3600.0

    def frame_times(self, rng, period=5):
        t, out = 1.0, []
        while t < len(self.p) - 1:
            if rng.random() > 0.05:  # some readings are lost
                out.append(t + rng.uniform(0, 0.8))
            t += period
        return out


def write_capture(path, times, payloads, version=None, duplicate_every=0):
    with open(path, "w") as f:
        for i, (t, p) in enumerate(zip(times, payloads)):
            rec = cf.record(START + datetime.timedelta(seconds=t), p, version, "test")
            cf.dump(rec, f)
            if duplicate_every and i % duplicate_every == 0:
                cf.dump(rec, f)  # the MGM's duplicate answer


def write_csvs(tmp, meter, rng, offset, header=True, missing=0.03):
    """The vendor's exports: power at 1SEC (kW), import and export energy at 1MIN (kWh).

    The CSV row stamped `s + offset` shows the meter's second s (offset = clock skew + lag).
    """
    def stamp(s):
        return (START + datetime.timedelta(seconds=s + offset)).strftime("%m/%d/%Y %H:%M:%S")
    power = [] if not header else ["Time Bucket (America/New_York),Vue Utility (kWatts)"]
    for s, w in enumerate(meter.p):
        if rng.random() > missing:
            power.append("%s,%.4f" % (stamp(s), w / 1000.0))
    files = {"power": os.path.join(tmp, "power.csv")}
    with open(files["power"], "w") as f:
        f.write("\n".join(power) + "\n")
    for kind, series in (("energy", meter.imp), ("returned", meter.exp)):
        rows = ["Time Bucket (America/New_York),Vue Utility (kWhs)"] if header else []
        for m in range(len(series) // 60 - 1):
            rows.append("%s,%.6f" % (stamp(60 * m), (series[60 * m + 60] - series[60 * m]) / 1000.0))
        files[kind] = os.path.join(tmp, kind + ".csv")
        with open(files[kind], "w") as f:
            f.write("\n".join(rows) + "\n")
    return files


def encode(value, width, order, enc):
    full = 1 << (8 * width)
    if value >= 0:
        raw = value
    elif enc == "twos":
        raw = full + value
    elif enc == "ones":
        raw = full - 1 + value
    elif enc == "signmag":
        raw = (1 << (8 * width - 1)) | -value
    else:
        raise ValueError(enc)
    assert 0 <= raw < full
    return raw.to_bytes(width, "big" if order == "be" else "little")


def run(capture, files, kinds=("power", "energy", "returned"), extra=()):
    argv = [capture] + [files[k] for k in kinds] + ["--column"] + list(kinds) + ["--json"] + list(extra)
    from io import StringIO
    out, old = StringIO(), sys.stdout
    sys.stdout = out
    try:
        rc = find_fields.main(argv)
    finally:
        sys.stdout = old
    assert rc == 0
    return json.loads(out.getvalue())


def best(rep, kind):
    col = [c for c in rep["columns"] if c["kind"] == kind][0]
    return col, col["candidates"][0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recovers_a_hidden_random_layout(tmp_path, seed):
    rng = random.Random(seed)
    escale = rng.choice([1.0, 0.1])
    # The counter's top bytes must change during the capture, or its width cannot be known.
    meter = Meter(rng, 1800, import_wh=(0x130000 - 150 / escale) * escale)
    times = meter.frame_times(rng)
    pw = rng.choice([2, 3, 4])
    hidden = {
        "power": dict(width=pw, order=rng.choice(["be", "le"]),
                      encoding=rng.choice(["twos", "ones", "signmag"]),
                      scale=rng.choice([1.0, 10.0] if pw == 2 else [1.0, 0.1, 10.0])),
        "energy": dict(width=rng.choice([3, 4]), order=rng.choice(["be", "le"]), encoding="unsigned",
                       scale=escale),
        "returned": dict(width=4, order=rng.choice(["be", "le"]), encoding="unsigned", scale=1.0),
    }
    # Layout: the three fields, a ms clock, noise bytes and (non-zero) constants in random order.
    parts = ["power", "energy", "returned", "clock"] + ["noise"] * rng.randint(3, 10) + \
        ["const%d" % i for i in range(rng.randint(5, 40))]
    rng.shuffle(parts)
    consts = {p: rng.randint(1, 255) for p in parts if p.startswith("const")}
    payloads, noise = [], set()
    for t in times:
        s = int(t)
        out = bytearray()
        for part in parts:
            if part in hidden:
                h = hidden[part]
                if part == "power":
                    v = int(round(meter.p[s] / h["scale"]))
                else:
                    v = int((meter.imp[s] if part == "energy" else meter.exp[s]) / h["scale"])
                h["offset"] = len(out)
                out += encode(v, h["width"], h["order"], h["encoding"])
            elif part == "clock":
                clock = len(out)
                out += struct.pack("<I", int(t * 1000 + 55555))
            elif part == "noise":
                noise.add(len(out))
                out.append(rng.randint(0, 255))
            else:
                out.append(consts[part])
        payloads.append(bytes(out))
    skew, lag = rng.randint(-40, 40), rng.randint(1, 8)
    cap = str(tmp_path / "cap.jsonl")
    write_capture(cap, times, payloads, duplicate_every=50)
    files = write_csvs(str(tmp_path), meter, rng, skew + lag)
    rep = run(cap, files)
    for kind, h in hidden.items():
        col, top = best(rep, kind)
        got = {k: top[k] for k in ("offset", "width", "encoding")}
        want = {k: h[k] for k in ("offset", "width", "encoding")}
        assert got == want, (kind, top, h)
        if h["width"] > 1:
            assert top["order"] == h["order"], (kind, top, h)
        assert top["scale"] == pytest.approx(h["scale"]), (kind, top, h)
        assert top["r"] > 0.8, (kind, top)
    col, _ = best(rep, "power")
    assert abs(col["offset_s"] - (skew + lag)) <= 1, (col["offset_s"], skew, lag)
    # The ms clock's three changing bytes are reported as a counter (a noise byte next to its low
    # byte, or a zero next to its top byte, leave it ambiguous which window is the field).
    spans = [set(range(c["offset"], c["offset"] + c["width"])) for c in rep["counters"]]
    assert any(set(range(clock, clock + 3)) <= s for s in spans), (rep["counters"], clock)
    unexplained = set()
    for a, b in rep["unexplained_bytes"]:
        unexplained |= set(range(a, b + 1))
    in_counters = set().union(*spans)
    assert noise and noise <= unexplained | in_counters, (noise, unexplained, in_counters)
    assert not unexplained - noise, "only noise is left unexplained"


def test_v2_layout_and_a_returned_counter_hidden_in_the_unknown_bytes(tmp_path):
    rng = random.Random(7)
    meter = Meter(rng, 1800, import_wh=2500000.0, export_wh=800.0)
    times = meter.frame_times(rng)
    payloads = []
    for t in times:
        s = int(t)
        net = meter.imp[s] - meter.exp[s]
        # Negative power: a real v2 meter mixes one's complement and sign-magnitude (protocol.md).
        p = bytearray(v2_payload(energy_raw=int(net), power_raw=meter.p[s],
                                 meter_ms=int(t * 1000) + 99, constant=b"\x2c\x2b",
                                 negative=rng.choice(["ones", "signmag"])))
        p[20:24] = struct.pack(">I", int(meter.exp[s]))
        payloads.append(bytes(p))
    # The net counter goes with a net energy CSV (negative while exporting).
    meter.imp = [i - e for i, e in zip(meter.imp, meter.exp)]
    cap = str(tmp_path / "v2.jsonl")
    write_capture(cap, times, payloads, version=2)
    files = write_csvs(str(tmp_path), meter, rng, offset=-17 + 4)
    rep = run(cap, files)
    col, top = best(rep, "power")
    assert (top["offset"], top["width"], top["order"], top["encoding"], top["scale"]) == \
        (57, 3, "be", "v2sign", 1.0), top
    assert col["offset_s"] == pytest.approx(-13, abs=1)
    _, top = best(rep, "energy")
    assert (top["offset"], top["width"], top["order"], top["scale"]) == (4, 4, "be", 1.0), top
    _, top = best(rep, "returned")
    assert (top["offset"], top["width"], top["order"], top["scale"]) == (20, 4, "be", 1.0), top
    consts = {(c["from"], c["to"]): c["hex"] for c in rep["constant_bytes"]}
    assert consts[(47, 47)] == "01" and consts[(50, 53)] == "03e82c2b"
    assert any(c["offset"] == 148 and c["width"] == 4 and c["order"] == "le" for c in rep["counters"])
    assert rep["versions"] == [2]


def test_human_report_and_a_terminal_log_as_capture(tmp_path):
    """The printed report names the field and the offset; a raw terminal log is accepted as is."""
    rng = random.Random(11)
    meter = Meter(rng, 900)
    times = meter.frame_times(rng)
    from mgm_payloads import frame
    log = "".join('"%s",%s' % ((START + datetime.timedelta(seconds=int(t))).strftime("%Y-%m-%d %H:%M:%S"),
                               frame(0x72, v2_payload(energy_raw=int(meter.imp[int(t)]),
                                                      power_raw=meter.p[int(t)])).hex().upper())
                  for t in times)
    cap = tmp_path / "terminal.log"
    cap.write_text(log)
    files = write_csvs(str(tmp_path), meter, rng, offset=6)
    r = subprocess.run([sys.executable, TOOL, str(cap), files["power"]], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "best clock offset CSV = capture +6s" in r.stdout or "+5s" in r.stdout or "+7s" in r.stdout
    first = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("1.")][0]
    assert "bytes 57-59 BE" in first and "x 1 " in first, r.stdout
    assert "constant bytes:" in r.stdout and "50-53=03e8fbfb" in r.stdout


BAD = [
    ("garbage capture", "cap", "this is not a capture\nnor this\n", "expected"),
    ("bad json line", "cap", '{"t": "2023-12-08T08:55:46Z", "hex": "00"}\n{"t": 5\n', "line 2"),
    ("bad hex", "cap", '{"t": "2023-12-08T08:55:46Z", "hex": "zz"}\n', "not hex"),
    ("empty capture", "cap", "", "empty"),
    ("garbage csv", "csv", "hello,world\nfoo,bar\n", "12/08/2023 08:55:46,1.4140"),
    ("missing csv", "csv", None, "cannot read"),
]


@pytest.mark.parametrize("name,which,content,needle", BAD, ids=[b[0] for b in BAD])
def test_unreadable_inputs_give_a_clear_error(tmp_path, name, which, content, needle):
    rng = random.Random(3)
    meter = Meter(rng, 300)
    times = meter.frame_times(rng)
    cap = str(tmp_path / "cap.jsonl")
    write_capture(cap, times, [v2_payload(energy_raw=1000 + i, power_raw=500) for i in range(len(times))])
    csv = write_csvs(str(tmp_path), meter, rng, 0)["power"]
    bad = str(tmp_path / ("bad." + ("jsonl" if which == "cap" else "csv")))
    if content is not None:
        with open(bad, "w") as f:
            f.write(content)
    args = [bad, csv] if which == "cap" else [cap, bad]
    r = subprocess.run([sys.executable, TOOL] + args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert needle in r.stderr, r.stderr


def test_capture_and_csv_that_do_not_overlap(tmp_path):
    rng = random.Random(4)
    meter = Meter(rng, 300)
    times = meter.frame_times(rng)
    cap = str(tmp_path / "cap.jsonl")
    write_capture(cap, times, [v2_payload(energy_raw=1000 + i, power_raw=500) for i in range(len(times))])
    csv = write_csvs(str(tmp_path), meter, rng, 86400 * 3)["power"]
    r = subprocess.run([sys.executable, TOOL, cap, csv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "do not overlap" in r.stderr and "Traceback" not in r.stderr


def test_csv_in_local_time_against_a_utc_capture(tmp_path):
    """The firmware stamps UTC; the vendor's CSV is in the user's time zone: a whole-hour shift is
    found on its own and the remaining offset is still searched."""
    rng = random.Random(5)
    meter = Meter(rng, 900)
    times = meter.frame_times(rng)
    payloads = [v2_payload(energy_raw=int(meter.imp[int(t)]), power_raw=meter.p[int(t)]) for t in times]
    cap = str(tmp_path / "cap.jsonl")
    write_capture(cap, times, payloads)
    files = write_csvs(str(tmp_path), meter, rng, offset=-5 * 3600 + 9)
    rep = run(cap, files, kinds=("power",))
    col, top = best(rep, "power")
    assert rep["timezone_shift_s"] == -5 * 3600
    assert col["offset_s"] == pytest.approx(-5 * 3600 + 9, abs=1)
    assert (top["offset"], top["width"]) == (57, 3)


# ---------- the module's own log lines as the ground truth (MGM log mode, issue 13) ----------
def test_a_v6_capture_is_explained_by_its_own_log_lines(tmp_path):
    from test_capture import record_from_sim
    # v6: the `r` payload is a layout no decoder reads; the module's log lines are the truth. Lines
    # cut short, frames inside lines and other clusters' lines do not get in the way.
    cap, sim = record_from_sim(tmp_path, version=6, polls=60, rx_other=0.3, rx_position="mixed",
                               faults=[("rx_cut", {"probability": 0.1}),
                                       ("rx_split", {"probability": 0.2})])
    assert any(m["power_w"] < 0 for m in sim.readings) and any(m["power_w"] > 0 for m in sim.readings)
    r = subprocess.run([sys.executable, TOOL, str(cap), "--truth", "log", "--json"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["truth"] == "log" and rep["payload_length"] == 64 and rep["paired"] >= 40
    # Where sim/mgm_sim.py's made-up layout keeps them: power 16-19 BE signed, import 4-9 BE,
    # export 10-15 BE (bytes that never changed cannot be placed: the narrowest unambiguous fields).
    _, top = best(rep, "power")
    assert (top["offset"], top["width"], top["order"], top["encoding"], top["scale"]) == \
        (16, 4, "be", "twos", 1.0), top
    assert top["r"] > 0.999 and top["mean_abs_err"] == 0
    for kind, end in (("energy", 9), ("returned", 15)):
        _, top = best(rep, kind)
        assert top["offset"] + top["width"] - 1 == end and top["order"] == "be", (kind, top)
        assert top["scale"] == 1.0 and top["mean_abs_err"] == 0, (kind, top)
    # The human report says where the truth came from.
    r = subprocess.run([sys.executable, TOOL, str(cap), "--truth", "log"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "ground truth: " in r.stdout and "from the MGM111's log lines" in r.stdout
    assert "bytes 16-19 BE twos" in r.stdout


def test_truth_log_needs_log_lines_and_says_how_to_get_them(tmp_path):
    rng = random.Random(3)
    cap = tmp_path / "cap.jsonl"
    times = [5.0 * k for k in range(20)]
    write_capture(cap, times, [v2_payload(1000 + k, rng.randint(100, 900)) for k in range(20)], 2)
    r = subprocess.run([sys.executable, TOOL, str(cap), "--truth", "log"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "MGM log mode" in r.stderr and '"cmd": "rx"' in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, TOOL, str(cap)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--truth log" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "x.csv").write_text("12/08/2023 08:00:01,1.0\n")
    r = subprocess.run([sys.executable, TOOL, str(cap), str(tmp_path / "x.csv"), "--truth", "log"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no CSV" in r.stderr
