"""Soak: 10,000 polls of the real firmware under MicroPython with a small heap, against the
simulated MGM111 (faults included) and a real broker. Proves it fits an ESP32 without PSRAM and
that nothing grows; the figures it prints go into the issue note and bench/results.md."""
import json
import os
import signal
import time

POLLS = int(os.environ.get("SOAK_POLLS", "10000"))
# The app running holds ~121 KB of heap on this 64-bit port (pointers and heap blocks twice the
# ESP32's size); `make bench` (or `python3 bench/run.py --soak-only`) finds the smallest heap that
# passes: 128K or 136K when last measured (it varies by a step between runs; 136K with MQTT over TLS
# and a CA to check; 144K at the start of issue 10's heap work). 152K leaves a 16K margin so that a
# loaded CI machine cannot make this flaky; it may only go down. tests/test_ota_e2e.py installs an
# update at this heap too (it passes at 144K, fails at 136K), and the bench's broker restarts run
# at it (at the smallest heap a long outage ends in a clean restart: app.NO_MEMORY_S).
HEAP = os.environ.get("SOAK_HEAP", "152K")


def test_soak_10000_polls_small_heap(mgm, firmware, ha, tmp_path):
    import sim_env
    mpy = sim_env.compile_firmware(str(tmp_path / "mpy"))  # as deployed: .mpy, not source
    sim = mgm(8, speedup=1000)
    # poll 5 s compressed 1000x: a poll every ~5 ms, as fast as the simulator answers.
    fw = firmware(sim, heapsize=HEAP, mpy_dir=mpy, meter={"poll_interval_s": 5}, debug={"time_scale": 1000})
    deadline = time.time() + 30
    while True:  # checking the process too: one that ran out of memory has exited within a second
        try:
            ha.diag(lambda d: d["readings"] >= 10, timeout=1)
            break
        except AssertionError:
            if fw.proc.poll() is not None or time.time() > deadline:
                raise AssertionError("no readings published at -X heapsize=%s; firmware said:\n%s"
                                     % (HEAP, fw.output[-1500:]))
    t0 = time.time()
    faults = ["garbage", "log_text", "duplicate", "errors", "truncate", "dollar"]
    i = 0
    while True:
        try:
            d = ha.diag(timeout=30, after=max(0, ha.mark() - 1))
        except AssertionError as e:  # what the firmware said is what explains it (a MemoryError...)
            raise AssertionError("%s\nfirmware said:\n%s" % (e, fw.output[-3000:]))
        if d["readings"] + d["duplicates"] >= POLLS:
            break
        assert fw.proc.poll() is None, fw.output[-3000:]
        assert time.time() - t0 < 900, "soak too slow: %s" % d
        # Sprinkle line faults so the soak also exercises resync and the error paths.
        sim.clear_faults()
        sim.set_fault(faults[i % len(faults)], count=3)
        i += 1
        time.sleep(2)
    sim.clear_faults()
    # At 1000x a few faulted polls already count as "no readings": it must recover by itself.
    d = ha.diag(lambda x: x["link"] == "ok", timeout=30, after=ha.mark())
    fw.proc.send_signal(signal.SIGINT)
    fw.wait_exit(20)
    stats = fw.wait_log("stats: ")
    print("\nSOAK heap=%s polls=%d in %.0f s: %s" % (HEAP, d["readings"] + d["duplicates"], time.time() - t0, stats))
    print("SOAK diag " + json.dumps(d))
    assert "Traceback" not in fw.output and "MemoryError" not in fw.output
    assert d["link"] == "ok"
    assert d["free_mem"] > 8 * 1024, "less than 8 KB heap left after %d polls" % POLLS
    published = [int(v) for v in ha.values("/energy/in")]
    assert published == sorted(published)
