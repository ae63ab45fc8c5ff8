"""`make bench`: memory, blocking and speed of the firmware under the real MicroPython unix port.

Prints a table and writes bench/results.md (committed, with machine and date, so a change that
makes things worse shows in the diff). Takes a few minutes; not part of `make test`.
"""
import binascii
import datetime
import glob
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import mgm_payloads  # noqa: E402

MPYPATH = os.pathsep.join([os.path.join(ROOT, d) for d in ("firmware", "tools", "build/lib")] + [".frozen"])
CYCLE = os.path.join(ROOT, "bench", "mpy_cycle.py")
SOAK_POLLS = int(os.environ.get("BENCH_SOAK_POLLS", "2000"))
HEAPS = ["32K", "40K", "48K", "64K", "96K"]

FRAMES = {
    # A typical v2 reading: 1,234.567 kWh net (v2 counters above 0x400000 are junk), 1500 W.
    "v2": mgm_payloads.frame(0x72, mgm_payloads.v2_payload(energy_raw=1234567, power_raw=1500, meter_ms=1234)),
    # A typical ZCL reading (MGM v7/v8): import, export, demand.
    "zcl": mgm_payloads.frame(0x72, mgm_payloads.zcl_payload(seq=3, import_raw=12345678, export_raw=4567,
                                                             demand_raw=1500)),
}


def run_cycle(name, frame, tmp):
    path = os.path.join(tmp, name + ".hex")
    with open(path, "w") as f:
        f.write(binascii.hexlify(frame).decode())
    # A big heap: allocation is counted with the collector off, nothing may run out meanwhile.
    mpy = subprocess.run(["micropython", "-X", "heapsize=4M", CYCLE, name, path], capture_output=True,
                         text=True, env=dict(os.environ, MICROPYPATH=MPYPATH), timeout=300)
    cpy = subprocess.run([sys.executable, CYCLE, name, path], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "firmware")), timeout=300)
    for p in (mpy, cpy):
        if p.returncode != 0:
            sys.exit("bench/mpy_cycle.py failed:\n" + p.stdout + p.stderr)
    return json.loads(mpy.stdout.strip().splitlines()[-1]), json.loads(cpy.stdout.strip().splitlines()[-1])


def mpy_sizes(tmp):
    files = sorted(glob.glob(os.path.join(ROOT, "firmware", "*.py"))
                   + glob.glob(os.path.join(ROOT, "firmware", "decoders", "*.py"))
                   + [os.path.join(ROOT, "firmware", "board", "__init__.py"),
                      os.path.join(ROOT, "firmware", "board", "esp32.py"),
                      os.path.join(ROOT, "build", "lib", "umqtt", "simple.py")])
    rows = []
    for src in files:
        if not os.path.exists(src):
            continue
        rel = os.path.relpath(src, ROOT)
        out = os.path.join(tmp, rel.replace(os.sep, "_")[:-3] + ".mpy")
        # -march=xtensawin: the ESP32's bytecode (the native arch only matters for @native code).
        subprocess.run(["mpy-cross", "-march=xtensawin", "-o", out, src], check=True)
        rows.append((rel, os.path.getsize(src), os.path.getsize(out)))
    return rows


def soak(heap):
    """The firmware soak (tests/test_soak.py), shortened. -> (passed, stats line, seconds)."""
    t = time.time()
    env = dict(os.environ, SOAK_POLLS=str(SOAK_POLLS), SOAK_HEAP=heap)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                        os.path.join(ROOT, "tests", "test_soak.py")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1200)
    m = re.search(r"SOAK heap=.*", p.stdout)
    d = re.search(r"SOAK diag (\{.*\})", p.stdout)
    diag = json.loads(d.group(1)) if d else {}
    why = ""
    if p.returncode != 0:
        e = re.findall(r"^E +(.*)$", p.stdout, re.M)
        why = (e[0] if e else p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "failed")[:160]
    return p.returncode == 0, (m.group(0) if m else ""), diag, why, time.time() - t


def broker_restart(heap="64K"):
    """The firmware against the simulator; mosquitto killed and restarted mid-run. -> stats line."""
    import sim_env
    from mgm_sim import MgmSim
    tmp = tempfile.mkdtemp(prefix="vue-bench-")
    broker = sim_env.Broker(workdir=os.path.join(tmp, "broker")).start()
    sim = MgmSim(version=8, speedup=1000)
    sim.start()
    logf = open(os.path.join(tmp, "fw.log"), "wb")
    fw = None
    try:
        cfg = sim_env.firmware_config(sim.path, broker.port, meter={"poll_interval_s": 5},
                                      debug={"time_scale": 1000})
        fw = sim_env.start_firmware(os.path.join(tmp, "fw"), cfg, heapsize=heap, stdout=logf)
        time.sleep(8)
        before = _log(tmp)
        broker.stop()
        time.sleep(3)
        broker.start()
        time.sleep(10)  # reconnect (backoff), re-subscribe, rediscovery, outbox flush
        fw.send_signal(signal.SIGINT)
        fw.wait(20)
        out = _log(tmp)
        m = re.search(r"stats: .*", out)
        ok = "Traceback" not in out and "MemoryError" not in out
        reconnected = out.count("connected") > before.count("connected")
        return (m.group(0) if m else "no stats line: " + out[-300:]), ok and reconnected
    finally:
        if fw and fw.poll() is None:
            fw.kill()
            fw.wait()
        sim.stop()
        broker.stop()
        logf.close()


def _log(tmp):
    with open(os.path.join(tmp, "fw.log"), "rb") as f:
        return f.read().decode("utf-8", "replace")


def wait_for_sim(minutes=int(os.environ.get("BENCH_WAIT_SIM_MIN", "0"))):
    # The soak needs the simulator; BENCH_WAIT_SIM_MIN lets a bench started early wait for it.
    for _ in range(minutes + 1):
        if os.path.exists(os.path.join(ROOT, "tools", "mgm_sim.py")):
            return True
        if _ < minutes:
            print("tools/mgm_sim.py not there yet; waiting a minute")
            time.sleep(60)
    return False


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def longest(stats):
    m = re.search(r"longest step (\d+) ms", stats)
    return int(m.group(1)) if m else None


def main():
    t0 = time.time()
    lines = []
    out = lines.append
    mpy_ver = subprocess.run(["micropython", "-c", "import sys; print(sys.version.split(\"; \", 1)[-1])"],
                             capture_output=True, text=True).stdout.strip()
    out("# Benchmarks (`make bench`)")
    out("")
    out("Machine: %s, %s; CPython %s; %s (unix port); %s UTC." % (
        platform.machine(), cpu_model(), platform.python_version(), mpy_ver,
        datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")))
    out("")
    tmp = tempfile.mkdtemp(prefix="vue-bench-")

    out("## Reading cycle (MicroPython unix port; 1000 iterations, gc off, gc.mem_alloc deltas)")
    out("")
    out("| frame | parser B | decoder B | filter B | whole cycle B | heap after 100 / 10,000 cycles | "
        "decode us (MicroPython / CPython) | cycle us (MicroPython / CPython) |")
    out("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for name, frame in FRAMES.items():
        m, c = run_cycle(name, frame, tmp)
        out("| %s (%d bytes) | %g | %g | %g | %g | %d / %d | %.1f / %.1f | %.1f / %.1f |" % (
            name, m["frame_len"], m["alloc_parser"], m["alloc_decoder"], m["alloc_filter"], m["alloc_cycle"],
            m["heap_100"], m["heap_10000"], m["decode_us"], c["decode_us"], m["cycle_us"], c["cycle_us"]))
        verdicts.append((name + " parser/decoder allocate 0", m["alloc_parser"] == 0 and m["alloc_decoder"] == 0))
        assert len(m["topics"]) == 4, "the %s frame did not publish all four values: %s" % (name, m["topics"])
        verdicts.append((name + " whole cycle < 1 KB", m["alloc_cycle"] < 1024))
        verdicts.append((name + " heap does not grow (<= 64 B over 9,900 cycles)",
                         m["heap_10000"] - m["heap_100"] <= 64))
    out("")
    out("The whole cycle = request bytes -> FrameParser.feed(whole frame) -> decoders.decode into a reused "
        "Reading -> ReadingFilter.apply -> the MQTT topic/payload strings App.on_reading builds, stored "
        "newest-per-topic (no socket). Its bytes are those strings: per value published (power, energy in/out/net), "
        "`base + \"/...\"` and `str(value)`, about 64 B each on the 64-bit unix port.")
    out("")

    out("## Deployed size (mpy-cross -march=xtensawin)")
    out("")
    out("| file | .py bytes | .mpy bytes |")
    out("|---|---|---|")
    rows = mpy_sizes(tmp)
    for rel, py, mpy in rows:
        out("| %s | %d | %d |" % (rel, py, mpy))
    out("| **total** | %d | %d |" % (sum(r[1] for r in rows), sum(r[2] for r in rows)))
    out("")

    out("## Firmware soak (tests/test_soak.py, %d polls, simulator faults, real mosquitto)" % SOAK_POLLS)
    out("")
    if wait_for_sim():
        out("| -X heapsize | result | longest step ms | free heap at end | seconds |")
        out("|---|---|---|---|---|")
        smallest = None
        for heap in HEAPS:
            ok, stats, diag, why, secs = soak(heap)
            out("| %s | %s | %s | %s | %.0f |" % (heap, "pass" if ok else "FAIL: " + why.replace("|", "/"),
                                                 longest(stats) if stats else diag.get("max_step_ms", "-"),
                                                 diag.get("free_mem", "-"), secs))
            print(lines[-1])
            if ok:
                smallest = heap
                break  # heaps are ascending: the first that passes is the smallest
        out("")
        out("Smallest heap that passes: %s (target 64K or less)." % (smallest or "none of " + ", ".join(HEAPS)))
        verdicts.append(("soak passes at <= 64K", smallest is not None and int(smallest[:-1]) <= 64))
        out("")
        stats, ok = broker_restart()
        step = longest(stats)
        out("Broker restart (mosquitto stopped 3 s mid-run, heap 64K): %s; %s." % (
            "reconnected" if ok else "DID NOT RECOVER", stats))
        verdicts.append(("longest step during broker restart < 20 ms", step is not None and step < 20))
    else:
        out("Not measured: tools/mgm_sim.py (the simulator) does not exist yet.")
    out("")
    out("## Targets")
    out("")
    for what, ok in verdicts:
        out("- %s: %s" % (what, "met" if ok else "**MISSED**"))
    out("")
    out("Bench took %.0f s." % (time.time() - t0))
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(ROOT, "bench", "results.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
