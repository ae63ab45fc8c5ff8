# The application: wires the MGM111 session, the reading filter and MQTT together and runs them as
# asyncio tasks. Same code on the ESP32 and the unix port; the board module is the only difference.
import binascii
import gc
import json
import sys
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

import log
import meter
from mgm_link import Link
from mqtt import Mqtt
from readings import ReadingFilter

VERSION = "0.1.0"
STATE_FILE = "state.json"
STATE_SAVE_S = 1800  # v2 totals to flash: rare (a flash write blocks), the retained MQTT copy is primary
RESTORE_WINDOW_MS = 2000  # after the first connect, wait this long for our retained totals
DIAG_EVERY_S = 60
CRASH_CLEAR_MS = 600000  # this long without a crash resets main.py's crash counter


def _remove(path):
    import os
    try:
        os.remove(path)
    except OSError:
        pass


def _ms():
    return time.ticks_ms()


class App:
    def __init__(self, cfg, board):
        self.cfg = cfg
        self.board = board
        uid = board.unique_id()
        self.node_id = "vue_utility_" + uid
        m = cfg["mqtt"]
        self.base = m["base_topic"] or ("vue_utility/" + uid)
        self.prefix = m["discovery_prefix"]
        # Made once: building them per reading would allocate ~250 B every few seconds for years.
        self.t_power = self.base + "/power"
        self.t_in = self.base + "/energy/in"
        self.t_out = self.base + "/energy/out"
        self.t_net = self.base + "/energy/net"
        rep = cfg["reporting"]
        self.min_change_w = rep["power_min_change_w"]
        self.power_max_ms = rep["power_max_interval_s"] * 1000
        self.energy_ms = rep["energy_interval_s"] * 1000
        self.raw_frames = cfg["debug"]["raw_frames"]
        self.filter = ReadingFilter()
        self.has = set()  # values the meter provides: decides which entities are announced
        self.restore_done = False
        self._retained = {}  # our retained totals as the broker hands them back after a reboot
        self.fmt = None
        self.last_power = None
        self.last_power_ms = 0
        self.last_energy_ms = None
        self.last_totals = None
        self.start_ms = _ms()
        self.max_step_ms = 0
        self.diag_due = True
        self.discovery_due = False
        self.restart_at = None
        self.state_dirty = False
        self.diag_every_ms = max(1000, DIAG_EVERY_S * 1000 // cfg["debug"]["time_scale"])
        self.leds = board.Leds(cfg)
        self.wifi = board.Wifi(cfg)
        uart = board.Uart(cfg)
        self._load_state()
        poll_s = cfg["meter"]["poll_interval_s"]
        # A value set from HA survives reboots, until config.json itself is changed.
        if self.saved.get("config_poll_interval_s") == poll_s:
            poll_s = self.saved.get("poll_interval_s", poll_s)
            self.raw_frames = self.saved.get("raw_frames", self.raw_frames)
        self.meter = meter.MeterSession(
            lambda on_frame, on_log: Link(uart, on_frame, on_log),
            self.on_reading, self.on_link_state, self.on_undecoded,
            poll_s, cfg["meter"]["startup_delay_s"], cfg["debug"]["time_scale"])
        self.mqtt = Mqtt(cfg, m["client_id"] or ("vue-utility-" + uid), self.base,
                         self.on_message, self.on_connect)
        log.listener = self._on_log_error

    # --- persistence of what must survive a reboot (v2 totals, settings changed over MQTT) ---
    def _load_state(self):
        try:
            with open(STATE_FILE) as f:
                self.saved = json.loads(f.read())
        except (OSError, ValueError):
            self.saved = {}
        s = self.saved
        if "consumed" in s:
            self.filter.restore_v2(s.get("consumed"), s.get("returned"), s.get("net"))

    def _save_state(self):
        f = self.filter
        s = {"poll_interval_s": self.meter.poll_s, "raw_frames": self.raw_frames,
             "config_poll_interval_s": self.cfg["meter"]["poll_interval_s"]}
        if f.consumed is not None:
            s.update({"consumed": f.consumed, "returned": f.returned, "net": f.net.value})
        try:
            with open(STATE_FILE + ".tmp", "w") as fh:
                fh.write(json.dumps(s))
            import os
            os.rename(STATE_FILE + ".tmp", STATE_FILE)  # atomic: a power cut leaves old or new
        except OSError as e:
            log.warn("could not save %s: %s" % (STATE_FILE, e))
        self.state_dirty = False

    # --- from the meter ---
    def on_reading(self, r, payload):
        if self.raw_frames:
            self._publish_raw(payload)
        a = self.filter.apply(r)
        now = _ms()
        w = a.watts
        if w is not None and (
                self.last_power is None or abs(w - self.last_power) >= self.min_change_w
                or (self.power_max_ms and time.ticks_diff(now, self.last_power_ms) >= self.power_max_ms)):
            self.last_power = w
            self.last_power_ms = now
            self.mqtt.publish(self.t_power, str(w))
        if a.import_wh is None:
            return
        if a.export_wh is not None and "export" not in self.has:
            self.has.add("export")
            self.discovery_due = True  # announce "energy returned" now that the meter provides it
        self.last_totals = (a.import_wh, a.export_wh, a.net_wh)
        self.fmt = r.format
        if r.format == "v2":
            self.state_dirty = True
        if not self.restore_done:
            return  # retained totals not seen yet: publishing now could show HA a decrease
        if self.energy_ms and self.last_energy_ms is not None and \
                time.ticks_diff(now, self.last_energy_ms) < self.energy_ms:
            return
        self._publish_totals()

    def _publish_totals(self):
        if self.last_totals is None:
            return
        self.last_energy_ms = _ms()
        imp, exp, net = self.last_totals
        if net is None and exp is not None:
            net = imp - exp
        p = self.mqtt.publish
        p(self.t_in, str(imp), True)
        if exp is not None:
            p(self.t_out, str(exp), True)
        if net is not None:
            p(self.t_net, str(net), True)

    def _publish_raw(self, payload, error=None):
        t = time.gmtime()
        d = {
            "time": "%04d-%02d-%02dT%02d:%02d:%02dZ" % t[:6] if t[0] >= 2024 else None,
            "uptime_ms": time.ticks_diff(_ms(), self.start_ms),
            "mgm_version": self.meter.version,
            "cmd": "r",
            "hex": binascii.hexlify(payload).decode(),
        }
        if error:
            d["error"] = error
        self.mqtt.publish(self.base + "/debug/raw", json.dumps(d))

    def on_undecoded(self, payload, message):
        # Unknown layouts (MGM v4, v6...) stay visible so users can work them out; never guessed.
        if not self.raw_frames:
            self._publish_raw(payload, message)
        self.diag_due = True

    def on_link_state(self, state):
        self.leds.set("link", state == meter.OK)
        self.diag_due = True

    def _on_log_error(self, level, text):
        self.diag_due = True

    # --- MQTT ---
    async def on_connect(self, mq):
        mq.subscribe(self.base + "/cmd/+")
        mq.subscribe(self.prefix + "/status")
        self.discovery_due = True
        self.diag_due = True
        if not self.restore_done:
            # Our own retained totals: the values HA last saw. Never publish below them.
            mq.subscribe(self.base + "/energy/+")
            t0 = _ms()
            while time.ticks_diff(_ms(), t0) < RESTORE_WINDOW_MS:
                for _ in range(8):
                    mq.client.check_msg()
                mq.flush(2)  # discovery and diag meanwhile; totals wait for the window's end
                await asyncio.sleep_ms(20)
            mq.unsubscribe(self.base + "/energy/+")
            f = self.filter
            r = self._retained
            if "in" in r:
                f.restore_v2(r.get("in"), r.get("out", 0), r.get("net"))
                log.info("restored totals from the broker: in %s Wh, out %s Wh" % (r.get("in"), r.get("out")))
            self.restore_done = True
        if self.fmt == "v2" and self.last_totals is not None:
            self.last_totals = (self.filter.consumed, self.filter.returned, self.filter.net.value)
        self._publish_totals()

    def on_message(self, topic, msg):
        base = self.base
        if topic.startswith(base + "/energy/"):
            if not self.restore_done:
                try:
                    self._retained[topic[len(base) + 8:]] = int(msg)
                except ValueError:
                    pass
            return
        if topic == self.prefix + "/status":
            if msg == b"online":
                log.info("Home Assistant came back: re-announcing the device")
                self.discovery_due = True
                self.diag_due = True
                if self.last_power is not None:
                    self.mqtt.publish(self.t_power, str(self.last_power))
                self._publish_totals()
            return
        if not topic.startswith(base + "/cmd/"):
            return
        cmd = topic[len(base) + 5:]
        text = msg.decode() if isinstance(msg, (bytes, bytearray)) else str(msg)
        if cmd == "rejoin":
            log.info("command: re-join the meter")
            self.meter.rejoin_requested = True
        elif cmd == "restart":
            log.info("command: restart")
            self.restart_at = time.ticks_add(_ms(), 1000)
        elif cmd == "poll_interval":
            try:
                v = float(text)
                if v != int(v) or not 5 <= v <= 300:
                    raise ValueError
            except ValueError:
                return self._refuse(cmd, text, "a whole number of seconds from 5 to 300")
            self.meter.poll_s = int(v)
            log.info("command: poll interval %d s" % self.meter.poll_s)
            self._save_state()
            self.diag_due = True
        elif cmd == "raw_frames":
            if text not in ("ON", "OFF"):
                return self._refuse(cmd, text, "ON or OFF")
            self.raw_frames = text == "ON"
            log.info("command: raw frames %s" % text)
            self._save_state()
            self.diag_due = True
        else:
            self._refuse(cmd, text, "one of rejoin, restart, poll_interval, raw_frames")

    def _refuse(self, cmd, text, expected):
        shown = text if len(text) <= 40 else text[:40] + "..."
        log.warn("refused command %s=%r: expected %s" % (cmd, shown, expected))

    def _diag(self):
        gc.collect()  # free memory means what survives a collection, not what garbage hides
        m = self.meter
        f = self.filter
        return json.dumps({
            "link": m.state,
            "link_text": meter.TEXT[m.state],
            "last_error": log.last_error[:200] or "none",
            "mgm_version": m.version,
            "mgm_mac": m.mac,
            "rssi": self.wifi.rssi(),
            "uptime_s": time.ticks_diff(_ms(), self.start_ms) // 1000,
            "free_mem": gc.mem_free(),
            "readings": m.readings,
            "errors": m.mgm_errors + m.decode_errors,
            "mgm_errors": m.mgm_errors,
            "last_mgm_error": m.last_mgm_error,
            "decode_errors": m.decode_errors,
            "duplicates": m.duplicates,
            "rejected": f.rejected_watts + f.rejected_wh + f.rejected_scale,
            "joins": m.joins,
            "poll_interval_s": m.poll_s,
            "raw_frames": "ON" if self.raw_frames else "OFF",
            "max_step_ms": self.max_step_ms,
        })

    def _discovery(self):
        # Imported for the announcement only (HA start, new entity): its table would otherwise
        # hold ~8 KB of heap for the device's whole life.
        import discovery
        m = self.meter
        dev = discovery.device_info(self.node_id, self.cfg["device_name"], VERSION, m.version, m.mac)
        # Three missed updates -> unavailable (HA's expire_after), not a frozen value.
        every = max(m.poll_s, self.cfg["reporting"]["energy_interval_s"],
                    self.cfg["reporting"]["power_max_interval_s"] if self.min_change_w else 0)
        exp = 3 * every + 30
        for e in discovery.entities(self.has):
            self.mqtt.publish(discovery.config_topic(self.prefix, self.node_id, e),
                              discovery.payload(e, self.base, self.node_id, dev, exp), True)
            yield
        del discovery
        sys.modules.pop("discovery", None)

    # --- tasks ---
    async def _link_task(self):
        link = self.meter.link
        while True:
            link.poll()
            await asyncio.sleep_ms(5)

    async def _step_monitor(self):
        # How late a 10 ms sleep wakes up = the longest step any task took (the 20 ms budget).
        while True:
            t0 = _ms()
            await asyncio.sleep_ms(10)
            late = time.ticks_diff(_ms(), t0) - 10
            if late > self.max_step_ms:
                self.max_step_ms = late
                if late > 20:
                    log.info("slow step: %d ms" % late)

    async def _housekeeping(self, wdt):
        last_diag = _ms()
        last_save = _ms()
        announcing = None
        crash_log = True
        while True:
            wdt.feed()
            self.wifi.check()
            mq = self.mqtt
            self.leds.set("wifi", mq.connected)
            if mq.connected:
                if self.discovery_due:
                    self.discovery_due = False
                    announcing = self._discovery()
                if announcing is not None and len(mq.outbox) < 4:
                    # One entity per step (a burst of 20 would block the loop), and only while
                    # little is queued: ~0.5 KB each, all 20 waiting at once could exhaust the heap.
                    try:
                        next(announcing)
                    except StopIteration:
                        announcing = None
                        self.diag_due = True
                if self.diag_due or time.ticks_diff(_ms(), last_diag) >= self.diag_every_ms:
                    self.diag_due = False
                    last_diag = _ms()
                    mq.publish(self.base + "/diag", self._diag(), True)
            if self.state_dirty and time.ticks_diff(_ms(), last_save) >= STATE_SAVE_S * 1000:
                last_save = _ms()
                self._save_state()
            if crash_log and time.ticks_diff(_ms(), self.start_ms) > CRASH_CLEAR_MS:
                crash_log = False
                _remove("crash.log")
            if self.restart_at is not None and time.ticks_diff(_ms(), self.restart_at) >= 0:
                self.shutdown()
                self.board.reset()
            gc.collect()
            await asyncio.sleep_ms(100 if announcing is not None else 500)

    def shutdown(self):
        m = self.meter
        log.info("stats: %d readings, %d duplicates, %d MGM errors, %d undecodable, longest step %d ms, "
                 "%d bytes free" % (m.readings, m.duplicates, m.mgm_errors, m.decode_errors,
                                    self.max_step_ms, gc.mem_free()))
        if self.state_dirty:
            self._save_state()
        if self.mqtt.connected:
            try:
                self.mqtt.flush(10)
                self.mqtt.client.publish(self.base + "/status", "offline", True)
                self.mqtt.client.disconnect()
            except OSError:
                pass

    async def main(self):
        self.leds.set("power", True)
        self.wifi.start()
        wdt = self.board.Watchdog(30000)
        log.info("vue-utility %s on %s, device %s, MQTT base topic %s" % (
            VERSION, self.board.NAME, self.node_id, self.base))
        # gather, not loose tasks: an exception in any of them (a bug, a MemoryError) reaches
        # main.py, which logs it and restarts, instead of leaving the device half-alive.
        await asyncio.gather(self._step_monitor(), self._link_task(), self.mqtt.run(self.wifi.connected),
                             self._housekeeping(wdt), self.meter.run())
