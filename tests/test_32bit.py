"""No allocation per reading at the ESP32's word size. The frame parser, decoders.decode and
readings.ReadingFilter run as deployed (.mpy) under a 32-bit MicroPython (wasm32 from npm, run by
bench/mp32.mjs): small ints there are 31-bit, as on the ESP32, so a total of 2^30 Wh or more, or a
constant like `1 << 47`, is a heap-allocated long int unless the code avoids it. The 64-bit unix
port cannot show this: its small ints hold 62 bits. uint48 totals above 2^30 Wh are normal (10^9 Wh
is a meter at 1,000,000 kWh), and the whole uint48 range is what the ZCL type can carry."""
import json
import os
import random
import shutil
import subprocess

import pytest

import mgm_payloads
import sim_env

MP32 = os.path.join(sim_env.ROOT, "bench", "mp32.mjs")
WASM = os.path.join(sim_env.ROOT, "node_modules", "@micropython", "micropython-webassembly-pyscript")
TOP = (1 << 48) - 2  # the largest uint48 value; all ones means "no value"
N = 5  # decodes per payload, measured together

# Runs under the 32-bit MicroPython. Allocation is measured per payload and per filter step, so a
# failure names the values that allocate. Values come back as text, to check they are right too.
SCRIPT = r"""
import binascii
import json
import sys

import decoders
import heap_probe
import mgm_uart
import readings

assert sys.maxsize == 2 ** 31 - 1, "not a 32-bit MicroPython"
with open(sys.argv[1]) as f:
    data = json.load(f)
N = data["n"]
res = {"decode": [], "parse": [], "filter": [], "values": [], "accepted": 0}

r = decoders.Reading()
for h in data["payloads"]:
    p = binascii.unhexlify(h)
    decoders.decode(p, r)
    res["values"].append([str(r.import_wh), str(r.export_wh), str(r.watts), str(r.net_wh)])
    res["decode"].append(heap_probe.allocated(lambda: decoders.decode(p, r), N))

parser = mgm_uart.FrameParser(lambda cmd, payload: None)
for h in data["frames"]:
    f = binascii.unhexlify(h)
    parser.feed(f)  # the parser makes its payload view for a new length once
    res["parse"].append(heap_probe.allocated(lambda: parser.feed(f), N))

# One meter's readings in order, one every 5 s; each its own Reading, decoded before anything is
# measured. Nothing retained on the broker: the filter publishes from the first level on.
seq = [decoders.decode(binascii.unhexlify(h)) for h in data["sequence"]]
flt = readings.ReadingFilter()
flt.restore({})
now = 1000
res["resets"] = []
for i, x in enumerate(seq):
    step = lambda x=x, now=now: flt.apply(x, now)  # noqa: E731 (made before the measurement)
    resets = flt.meter_resets
    res["filter"].append(heap_probe.allocated(step, 1))
    if flt.meter_resets != resets:
        res["resets"].append(i)
    if flt.out.import_wh is not None:
        if not res["accepted"]:
            res["first"] = i
        res["accepted"] += 1
    now += 5000
print("RESULT " + json.dumps(res))
"""


def zcl(imp, exp, watts, seq=1, multiplier=1):
    return mgm_payloads.zcl_payload(seq=seq, import_raw=imp, export_raw=exp, multiplier=multiplier,
                                    divisor=1000, demand_raw=watts)


def cases():
    """(payload, expected import Wh, export Wh, W): the edges around 2^30, 2^31, 2^32 and the top
    of uint48, and values spread evenly in log scale from 2^30 to 2^48 (seeded: reproducible)."""
    rng = random.Random(30)
    edges = [(1 << 30) - 1, 1 << 30, (1 << 31) - 1, 1 << 31, 1 << 32, 10 ** 9, 2 * 10 ** 9, 10 ** 12,
             1 << 47, TOP]
    spread = [int(2 ** rng.uniform(30, 48)) for _ in range(150)]
    out = []
    for i, imp in enumerate(edges + spread):
        exp = edges[(i + 3) % len(edges)] if i % 2 else rng.randrange(1 << 30, TOP)
        watts = rng.choice([-1, 1]) * rng.randrange(0, 100000)
        out.append((zcl(imp, exp, watts, seq=i), imp, exp, watts))
    # multiplier 3 (seen on real meters): the scaled value must not allocate either
    for imp in (10 ** 9, 1 << 31, 10 ** 12, TOP // 3):
        out.append((zcl(imp, 1 << 40, 1500, multiplier=3), imp * 3, (1 << 40) * 3, 4500))
    # v2 (counters below 0x400000, but the same decode path and scaling)
    out.append((mgm_payloads.v2_payload(energy_raw=1234567, power_raw=1500, meter_ms=1234),
                None, None, 1500))
    return out


def sequence():
    """A meter's readings, one every 5 s: totals above 2^30 growing as a household's do (up to
    ~100 kW), a one-off glitch the filter must reject, then a persistent jump (a meter swap) it
    takes once confirmed."""
    rng = random.Random(31)
    imp, exp = 3 * 10 ** 9 + 12345, (1 << 33) + 7
    out = []
    for i in range(60):
        if i == 30:
            out.append(zcl(imp + 10 ** 9, exp, 700, seq=i))  # a glitch
            continue
        if i == 40:
            imp += 5 * 10 ** 10  # a meter swap
        imp += rng.randrange(0, 140)
        exp += rng.randrange(0, 20)
        out.append(zcl(imp, exp, rng.randrange(-3000, 6000), seq=i))
    return out


def run32(tmp_path, data):
    if not shutil.which("node"):
        pytest.fail("node is missing: apt-get install nodejs npm, then make deps")
    if not os.path.isdir(WASM):
        pytest.fail("the 32-bit MicroPython is missing: run `make deps` (npm ci)")
    mpy = sim_env.compile_firmware(str(tmp_path / "mpy"))  # as deployed: .mpy
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "alloc32.py").write_text(SCRIPT)
    p = subprocess.run(["node", MP32, "--lib", mpy, "--lib", os.path.join(sim_env.ROOT, "sim", "heap_probe.py"),
                        "--file", str(tmp_path / "data.json"), str(tmp_path / "alloc32.py"),
                        str(tmp_path / "data.json")], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, "the 32-bit run failed:\n" + p.stdout[-2000:] + p.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_no_allocation_per_reading_at_32_bit_with_totals_above_2_30(tmp_path):
    cs = cases()
    seq = sequence()
    data = {"n": N, "payloads": [c[0].hex() for c in cs],
            "frames": [mgm_payloads.frame(0x72, c[0]).hex() for c in cs],
            "sequence": [p.hex() for p in seq]}
    res = run32(tmp_path, data)

    # The values are right at 32-bit (not just cheap).
    for (payload, imp, exp, watts), got in zip(cs, res["values"]):
        want = [str(imp), str(exp), str(watts), "None"] if imp is not None else ["None", "None", "1500", "1234567"]
        assert got == want, "payload %s decoded to %s, expected %s" % (payload.hex(), got, want)
    # The measured steps are the filter's normal work: most readings publish their totals.
    assert res["accepted"] >= len(seq) - 10, "the filter published totals for only %d of %d readings" % (
        res["accepted"], len(seq))
    # Once per boot, not per reading, so these may allocate: the first total (the published series
    # starts) and the meter swap, which the filter reports in words.
    assert len(res["resets"]) == 1, "the filter did not take the meter swap as one reset: %s" % res["resets"]
    for i in (res["first"], res["resets"][0]):
        res["filter"][i] = 0

    def offenders(allocs, what, label):
        bad = ["%s: %d B" % (label(i), b) for i, b in enumerate(allocs) if b]
        return ["%s: %d of %d allocate; first: %s" % (what, len(bad), len(allocs), "; ".join(bad[:4]))] if bad else []
    values = lambda i: "import %s, export %s" % (cs[i][1], cs[i][2])  # noqa: E731
    problems = (offenders(res["parse"], "frame parser, per %d frames" % N, values)
                + offenders(res["decode"], "decoders.decode, per %d decodes" % N, values)
                + offenders(res["filter"], "ReadingFilter.apply, per reading", lambda i: "reading %d" % i))
    assert not problems, "allocations per reading at 32-bit:\n" + "\n".join(problems)
