# Runs the firmware's reading path (request -> parse -> decode -> filter -> MQTT strings) in a loop
# and prints one JSON line of measurements. Started by bench/run.py under `micropython` (allocation,
# heap, speed) and under CPython (speed only). Usage: mpy_cycle.py <name> <file holding the frame's hex>
# (a file, not argv: this unix port dies with "FATAL: uncaught NLR" on an argument over ~256 chars).
import sys
import gc
import json
import binascii
import time

import mgm_uart
import decoders
import readings

try:
    ticks_us = time.ticks_us
    ticks_diff = time.ticks_diff
except AttributeError:  # CPython
    def ticks_us():
        return int(time.perf_counter() * 1000000)

    def ticks_diff(a, b):
        return a - b

MPY = hasattr(gc, "mem_alloc")
N_ALLOC = 1000


class Cycle:
    """The per-reading work of the firmware, wired as meter.py/app.py wire it, minus the sockets."""

    def __init__(self, frame):
        self.frame = frame
        self.reading = decoders.Reading()
        self.filter = readings.ReadingFilter()
        self.parser = mgm_uart.FrameParser(self.on_frame, None)
        self.outbox = {}  # as mqtt.Mqtt.publish: newest value per topic
        self.base = "vue/sim0001"
        self.payload = None
        self.tx = None

    def on_frame(self, cmd, payload):
        self.payload = payload
        r = decoders.decode(payload, self.reading)
        self.on_reading(r)

    def on_reading(self, r):
        # Same string work as app.App.on_reading + _publish_totals (rate limits aside).
        a = self.filter.apply(r)
        if a.watts is not None:
            self.publish(self.base + "/power", str(a.watts))
        if a.import_wh is not None:
            self.publish(self.base + "/energy/in", str(a.import_wh))
            net = a.net_wh
            if a.export_wh is not None:
                self.publish(self.base + "/energy/out", str(a.export_wh))
                if net is None:
                    net = a.import_wh - a.export_wh
            if net is not None:
                self.publish(self.base + "/energy/net", str(net))

    def publish(self, topic, payload, retain=True):
        box = self.outbox
        if topic in box:
            del box[topic]
        box[topic] = (payload, retain)

    def whole(self):
        self.tx = mgm_uart.request(mgm_uart.CMD_READING)
        self.parser.feed(self.frame)


def per_iter(fn, n):
    """Bytes allocated per call of fn, with the collector off so nothing is freed meanwhile."""
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for _ in range(n):
        fn()
    b = gc.mem_alloc()
    gc.enable()
    return (b - a) / n


def timed(fn, n):
    t = ticks_us()
    for _ in range(n):
        fn()
    return ticks_diff(ticks_us(), t) / n


def main():
    name = sys.argv[1]
    with open(sys.argv[2]) as f:
        frame = binascii.unhexlify(f.read().strip())
    c = Cycle(frame)
    c.whole()  # warm up: first reading baselines the filter, parser caches its payload view
    c.whole()
    c.whole()
    payload = bytes(c.payload)  # a copy, for decoding on its own
    r = c.reading
    flt = c.filter
    res = {"name": name, "frame_len": len(frame)}

    def parse_only():
        c.parser.on_frame = noop
        c.parser.feed(frame)

    def noop(cmd, p):
        pass

    def decode_only():
        decoders.decode(payload, r)

    def filter_only():
        flt.apply(r)

    decoders.decode(payload, r)
    if MPY:
        res["alloc_parser"] = per_iter(parse_only, N_ALLOC)
        res["alloc_decoder"] = per_iter(decode_only, N_ALLOC)
        decoders.decode(payload, r)
        res["alloc_filter"] = per_iter(filter_only, N_ALLOC)
        c.parser.on_frame = c.on_frame
        res["alloc_cycle"] = per_iter(c.whole, N_ALLOC)
        # Heap in use (after a full collection) after 100 and after 10,000 cycles.
        res["heap_100"] = res["heap_10000"] = 0  # keys made now: the dict must not grow in between
        for _ in range(100):
            c.whole()
        gc.collect()
        res["heap_100"] = gc.mem_alloc()
        for _ in range(9900):
            c.whole()
        gc.collect()
        res["heap_10000"] = gc.mem_alloc()
    decoders.decode(payload, r)
    n = 2000
    res["decode_us"] = min(timed(decode_only, n) for _ in range(3))
    c.parser.on_frame = c.on_frame
    res["cycle_us"] = min(timed(c.whole, n) for _ in range(3))
    res["topics"] = sorted(c.outbox)
    print(json.dumps(res))


main()
