# Runs under the MicroPython unix port (tests/test_mgm_log_session.py): the firmware's MeterSession
# and Link on the real board UART (a pty where sim/mgm_sim.py plays the MGM111), no MQTT. What
# the session hands out is printed as one line, "RESULT <json>".
#   micropython tests/mgm_log_driver.py OPTIONS.json
# OPTIONS: device, seconds, poll_s, time_scale, mgm_log, off_after_s (turn the mode off then).
import json
import sys
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

import board.unix as board
import log
import meter
from mgm_link import Link

with open(sys.argv[1]) as f:
    opt = json.loads(f.read())

readings = []
rx = {}
undecoded = [0]
states = []


def on_reading(r, payload):
    readings.append([m.reading_source, r.format, r.seq, r.watts, r.import_wh, r.export_wh, r.net_wh])


def on_rx_line(cluster, view, n):
    k = "%04x" % cluster
    if k not in rx:
        rx[k] = []
    if len(rx[k]) < 400:
        rx[k].append(bytes(view[:n]).hex())


def on_undecoded(payload, message):
    undecoded[0] += 1


uart = board.Uart({"uart": {"device": opt["device"]}})
m = meter.MeterSession(lambda on_frame, on_log: Link(uart, on_frame, on_log), on_reading,
                       states.append, on_undecoded, opt.get("poll_s", 5), 0, opt.get("time_scale", 10),
                       mgm_log=opt.get("mgm_log", True), on_rx_line=on_rx_line)


async def link_task():
    while True:
        m.link.poll()
        await asyncio.sleep_ms(5)


async def switch_task():
    off = opt.get("off_after_s")
    if off is None:
        return
    await asyncio.sleep_ms(int(off * 1000))
    m.set_mgm_log(False)
    print("DRIVER mgm_log off")


async def main():
    try:
        await asyncio.wait_for(asyncio.gather(link_task(), m.run(), switch_task()), opt["seconds"])
    except asyncio.TimeoutError:
        pass


asyncio.run(main())
print("RESULT " + json.dumps({
    "readings": readings, "rx": rx, "undecoded": undecoded[0], "states": states, "state": m.state,
    "source": m.source, "source_text": m.source_text, "log_text": m.log_text, "version": m.version,
    "log_ignored": m.log_ignored, "rx_lines": m.rx_lines, "rx_bad": m.rx_bad,
    "log_readings": m.log_readings, "cross_checked": m.cross_checked,
    "cross_mismatches": m.cross_mismatches, "redacted_lines": m.redacted_lines,
    "decode_errors": m.decode_errors, "joins": m.joins, "warnings": log.counts["warning"],
    "last_error": log.last_error,
}))
