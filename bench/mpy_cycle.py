# The firmware's own reading path in a loop, measured. A bench board's UART hands app.App one reading
# frame per cycle and the app does the rest exactly as on the device: request -> Link.poll ->
# FrameParser -> MeterSession (duplicate check) -> decoders -> ReadingFilter -> App.on_reading ->
# Mqtt.publish into the outbox (no socket). Prints one JSON line.
# Started by bench/run.py under `micropython` (allocation, heap, speed) and CPython (speed only);
# bench/mp32_cycle.py runs the same under the 32-bit MicroPython.
# Usage: mpy_cycle.py <name> <file holding the frame's hex> (a file, not argv: this unix port dies
# with "FATAL: uncaught NLR" on an argument over ~256 chars).
import sys
import gc
import json
import binascii
import time

if not hasattr(gc, "mem_alloc"):  # CPython: the few MicroPython names the firmware uses, for the speed comparison
    import socket
    import struct
    sys.modules.update(usocket=socket, ustruct=struct, ubinascii=binascii)
    time.ticks_ms = lambda: int(time.monotonic() * 1000)
    time.ticks_us = lambda: int(time.perf_counter() * 1000000)
    time.ticks_diff = lambda a, b: a - b
    time.ticks_add = lambda a, b: a + b

import app  # noqa: E402
import config  # noqa: E402
import decoders  # noqa: E402
import heap_probe  # noqa: E402
import mgm_uart  # noqa: E402
import null_board  # noqa: E402

N_ALLOC = 1000


class BenchUart(null_board.Uart):
    """Each poll hands out the pending frame, byte by byte into the reader's buffer (a slice would
    allocate and be counted against the firmware)."""
    data = b""
    pos = 0

    def readinto(self, buf):
        d = self.data
        pos = self.pos
        n = len(d) - pos
        if n > len(buf):
            n = len(buf)
        for i in range(n):
            buf[i] = d[pos + i]
        self.pos = pos + n
        return n


null_board.Uart = BenchUart


class Cycle:
    def __init__(self, frame):
        cfg = config.defaults()
        cfg["mqtt"]["host"] = "bench.invalid"  # never connected: publishes stay in the outbox
        # Report every reading: the most work a cycle can do (no rate limit skips anything).
        cfg["reporting"].update(power_min_change_w=0, power_max_interval_s=0, energy_interval_s=0)
        self.app = app.App(cfg, null_board)
        # As after the first connect, with nothing retained on the broker: totals are published.
        self.app.filter.restore({})
        self.app.restore_done = True
        self.link = self.app.meter.link
        self.uart = self.link.uart
        self.frame = bytearray(frame)
        # The byte bumped per cycle so MeterSession does not drop the frame as a duplicate:
        # the ZCL sequence number, or the low byte of v2's meter clock.
        self.vary = 5 if frame[4] == 0x18 else 4 + 148

    def whole(self):
        f = self.frame
        f[self.vary] = (f[self.vary] + 1) & 0xFF
        self.link.send(mgm_uart.CMD_READING)
        self.uart.data = f
        self.uart.pos = 0
        self.link.poll()


def per_iter(fn, n):
    return heap_probe.allocated(fn, n) / n


def timed(fn, n):
    t = time.ticks_us()
    for _ in range(n):
        fn()
    return time.ticks_diff(time.ticks_us(), t) / n


def measure(name, frame):
    """The allocation figures; -> (cycle, results). Heap figures come after (see main)."""
    c = Cycle(frame)
    for _ in range(3):  # warm up: the filter baselines, the parser makes its payload view
        c.whole()
    m = c.app.meter
    assert m.readings == 3 and m.decode_errors == 0, "the bench frame was not read: %d" % m.readings
    payload = bytes(frame[4:-1])
    r = decoders.Reading()
    flt = c.app.filter
    parser = mgm_uart.FrameParser(lambda cmd, p: None)
    res = {"name": name, "frame_len": len(frame)}

    def parse_only():
        parser.feed(c.frame)

    def decode_only():
        decoders.decode(payload, r)

    now = time.ticks_ms()

    def filter_only():
        flt.apply(r, now)

    decoders.decode(payload, r)
    parse_only()  # the parser makes its payload view for this length once
    if heap_probe.MEASURABLE:
        res["alloc_parser"] = per_iter(parse_only, N_ALLOC)
        res["alloc_decoder"] = per_iter(decode_only, N_ALLOC)
        res["alloc_filter"] = per_iter(filter_only, N_ALLOC)
        res["alloc_cycle"] = per_iter(c.whole, N_ALLOC)
        res["heap_100"] = res["heap_10000"] = 0  # keys made now: the dict must not grow in between
    res["decode_us"] = res["cycle_us"] = 0
    c.decode_only = decode_only
    return c, res


def cycles(c, n):
    for _ in range(n):
        c.whole()


def report(c, res):
    n = 2000
    res["decode_us"] = min(timed(c.decode_only, n) for _ in range(3))
    res["cycle_us"] = min(timed(c.whole, n) for _ in range(3))
    res["readings"] = c.app.meter.readings
    res["duplicates"] = c.app.meter.duplicates
    res["topics"] = sorted(c.app.mqtt.outbox)
    print(json.dumps(res))


def read_frame(path):
    with open(path) as f:
        return binascii.unhexlify(f.read().strip())


def main():
    c, res = measure(sys.argv[1], read_frame(sys.argv[2]))
    if heap_probe.MEASURABLE:
        # Heap in use (after a full collection) after 100 and after 10,000 cycles.
        cycles(c, 100)
        gc.collect()
        res["heap_100"] = gc.mem_alloc()
        cycles(c, 9900)
        gc.collect()
        res["heap_10000"] = gc.mem_alloc()
    report(c, res)


if __name__ == "__main__":
    main()
