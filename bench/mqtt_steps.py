"""The MQTT layer's longest loop step, per network situation: `python3 bench/mqtt_steps.py`.

Each scenario starts the firmware (.mpy, as deployed) under the real MicroPython unix port against
the simulated MGM111 and a real mosquitto (directly, or through tests/net_faults.py's proxy with a
round trip, as an ESP32 has to its broker), runs the situation, stops it with Ctrl-C and reads the
firmware's own figure: "longest step N ms" (App._step_monitor, diag max_step_ms). The budget is
20 ms. Also prints how long data took to come back where that applies. Takes about 3 minutes.
Options: --only NAME[,NAME] to run some scenarios; --rtt-ms N for the proxied round trip (100);
--firmware DIR to measure another copy of firmware/ (e.g. `git archive` of an older commit).
"""
import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for d in ("sim", "tests"):
    sys.path.insert(0, os.path.join(ROOT, d))
import net_faults  # noqa: E402
import sim_env  # noqa: E402
from mgm_sim import MgmSim  # noqa: E402

KEEPALIVE_S = 10  # the smallest config.json allows: a vanished path is found soonest


class Run:
    """One firmware process with its log in a file, a broker port, and a paho client watching."""

    def __init__(self, tmp, mpy, port, name, **cfg_sections):
        self.sim = MgmSim(version=8, speedup=600)
        self.sim.start()
        self.log_path = os.path.join(tmp, name + ".log")
        self.logf = open(self.log_path, "wb")
        cfg = sim_env.firmware_config(self.sim.path, port, debug={"time_scale": 50},
                                      mqtt={"keepalive_s": KEEPALIVE_S}, **cfg_sections)
        self.proc = sim_env.start_firmware(os.path.join(tmp, name), cfg, stdout=self.logf, mpy_dir=mpy)
        self.t0 = time.time()

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, count=1, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(re.findall(pattern, self.log())) >= count:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def stop(self):
        """Ctrl-C: the firmware prints its stats line. -> (longest step ms, slow-step lines)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.sim.stop()
        self.logf.close()
        out = self.log()
        m = re.search(r"longest step (\d+) ms", out)
        slow = re.findall(r"slow step: (\d+) ms", out)
        crashed = "Traceback" in out
        return (int(m.group(1)) if m else None), [int(s) for s in slow], crashed, out


class Watcher:
    """A paho client on the broker: the time of each /power message (the firmware's data)."""

    def __init__(self, port):
        import paho.mqtt.client as paho
        self.times = []
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe("vue_utility/+/power")
        self.c.on_message = lambda c, u, m: self.times.append(time.time())
        self.c.reconnect_delay_set(0.05, 0.2)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def data_after(self, t, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            later = [x for x in self.times if x > t]
            if later:
                return later[0] - t
            time.sleep(0.02)
        return None

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


def session(tmp, mpy, rtt_ms):
    """Connect (CONNACK, 3 SUBACKs, restore window, UNSUBACK), discovery, readings for a while."""
    broker = sim_env.Broker(workdir=os.path.join(tmp, "b-session-%d" % rtt_ms)).start()
    proxy = net_faults.Proxy(broker.port, delay_s=rtt_ms / 2000).start() if rtt_ms else None
    r = Run(tmp, mpy, proxy.port if proxy else broker.port, "session-%d" % rtt_ms)
    try:
        ok = r.wait_log("MQTT connected")
        time.sleep(6)
    finally:
        res = r.stop()
        if proxy:
            proxy.stop()
        broker.stop()
    return res, {"connected": ok}


def refused(tmp, mpy, rtt_ms):
    """Nothing listens on the broker's port for 8 s (connection refused), then the broker starts."""
    port = sim_env.free_port()
    r = Run(tmp, mpy, port, "refused")
    time.sleep(8)
    t = time.time()
    broker = sim_env.Broker(port=port, workdir=os.path.join(tmp, "b-refused")).start()
    try:
        ok = r.wait_log("MQTT connected", timeout=90)
        extra = {"connected after broker start (s)": round(time.time() - t, 1) if ok else None}
        time.sleep(2)
    finally:
        res = r.stop()
        broker.stop()
    return res, extra


def silent(tmp, mpy, rtt_ms):
    """A broker that accepts TCP and never answers, for 15 s."""
    sb = net_faults.SilentBroker().start()
    r = Run(tmp, mpy, sb.port, "silent")
    try:
        time.sleep(15)
    finally:
        res = r.stop()
        sb.stop()
    return res, {"connect attempts": sb.accepted}


def vanish(tmp, mpy, rtt_ms):
    """Connected through the proxy, then the path vanishes silently (no FIN/RST) for 30 s and
    comes back: how long until the firmware notices, and its longest step meanwhile."""
    broker = sim_env.Broker(workdir=os.path.join(tmp, "b-vanish")).start()
    proxy = net_faults.Proxy(broker.port, delay_s=rtt_ms / 2000).start()
    w = Watcher(broker.port)
    r = Run(tmp, mpy, proxy.port, "vanish")
    extra = {}
    try:
        r.wait_log("MQTT connected")
        time.sleep(4)
        proxy.freeze()
        t = time.time()
        lost = r.wait_log(r"MQTT connection lost|no answer from the broker|keepalive", timeout=40)
        extra["noticed after (s)"] = round(time.time() - t, 1) if lost else None
        time.sleep(max(0, 30 - (time.time() - t)))
        proxy.thaw()
        t = time.time()
        d = w.data_after(t)
        extra["data again after the path is back (s)"] = round(d, 1) if d is not None else None
        time.sleep(1)
    finally:
        res = r.stop()
        w.stop()
        proxy.stop()
        broker.stop()
    return res, extra


def restart(tmp, mpy, rtt_ms, outage_s=20):
    """The broker is stopped for `outage_s` s and started again: seconds until readings flow."""
    broker = sim_env.Broker(workdir=os.path.join(tmp, "b-restart")).start()
    w = Watcher(broker.port)
    r = Run(tmp, mpy, broker.port, "restart")
    extra = {}
    try:
        r.wait_log("MQTT connected")
        w.data_after(time.time() - 1)
        time.sleep(2)
        w.stop()
        broker.stop()
        time.sleep(outage_s)
        broker.start()
        t = time.time()
        w = Watcher(broker.port)
        d = w.data_after(t)
        extra["data again after the broker restarted (s)"] = round(d, 1) if d is not None else None
        time.sleep(1)
    finally:
        res = r.stop()
        w.stop()
        broker.stop()
    return res, extra


SCENARIOS = [
    ("session, localhost", lambda tmp, mpy, rtt: session(tmp, mpy, 0)),
    ("session, RTT %(rtt)d ms", session),
    ("broker down (refused), then up", refused),
    ("broker accepts TCP, never answers", silent),
    ("path vanishes silently while connected, RTT %(rtt)d ms", vanish),
    ("broker restart after a 20 s outage", restart),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--rtt-ms", type=int, default=100)
    ap.add_argument("--firmware", default=None)
    a = ap.parse_args()
    if a.firmware:
        sim_env.FIRMWARE = os.path.abspath(a.firmware)
    only = [s for s in a.only.split(",") if s]
    tmp = tempfile.mkdtemp(prefix="vue-mqtt-steps-")
    mpy = sim_env.compile_firmware(os.path.join(tmp, "mpy"))
    print("scenario | longest step ms | steps > 20 ms | other figures")
    print("---|---|---|---")
    rows = []
    for title, fn in SCENARIOS:
        title = title % {"rtt": a.rtt_ms}
        if only and not any(o in title for o in only):
            continue
        (longest, slow, crashed, out), extra = fn(tmp, mpy, a.rtt_ms)
        over = len([s for s in slow if s > 20])
        if crashed:
            extra["CRASHED"] = True
        line = "%s | %s | %d | %s" % (title, longest, over, json.dumps(extra))
        print(line, flush=True)
        rows.append(line)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
