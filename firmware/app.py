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
RX_LINES_PER_MIN = 30  # MGM received-message lines published on <base>/debug/rx
ANNOUNCE_WAIT_S = 60  # announce without the MGM's version and MAC if it has not answered by then
CRASH_CLEAR_MS = 600000  # this long without a crash resets main.py's crash counter


def _remove(path):
    import os
    try:
        os.remove(path)
    except OSError:
        pass


def _ms():
    return time.ticks_ms()


def _utc():
    # ISO time for captures, or None while the clock is not set (capture.py then uses its own).
    t = time.gmtime()
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % t[:6] if t[0] >= 2024 else None


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
        self.start_ms = _ms()
        self.max_step_ms = 0
        self.diag_due = True
        self.discovery_due = False  # HA asked (birth) or we (re)connected: announce everything
        self.announced_dev = None  # what was last announced: the device entry, expire_after, export
        self.announced_exp = None
        self.announced_export = False
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
            poll_s, cfg["meter"]["startup_delay_s"], cfg["debug"]["time_scale"],
            mgm_log=self.saved.get("mgm_log", cfg["meter"]["mgm_log"])
            if self.saved.get("config_mgm_log") == cfg["meter"]["mgm_log"] else cfg["meter"]["mgm_log"],
            on_rx_line=self.on_rx_line)
        self._rx_budget = RX_LINES_PER_MIN
        self._rx_window_ms = _ms()
        self.rx_not_published = 0
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
        if not isinstance(s, dict):
            self.saved = s = {}
        f = self.filter
        # The filter measures time as the meter session does (tests compress it: debug.time_scale).
        f.time_scale = self.cfg["debug"]["time_scale"]
        self.t_state = self.base + "/energy/state"  # our record of the published totals
        if isinstance(s.get("energy"), dict):
            f.load(s["energy"])
        elif "consumed" in s:  # written by firmware 0.1 (v2 only)
            f.load({"fmt": "v2", "in": s.get("consumed"), "out": s.get("returned"), "m_net": s.get("net")})

    def _save_state(self):
        # Settings changed from HA survive reboots, until config.json itself changes them.
        s = {"poll_interval_s": self.meter.poll_s, "raw_frames": self.raw_frames,
             "config_poll_interval_s": self.cfg["meter"]["poll_interval_s"],
             "mgm_log": self.meter.mgm_log, "config_mgm_log": self.cfg["meter"]["mgm_log"]}
        e = self.filter.snapshot()
        if e is not None:
            s["energy"] = e  # a second copy of our record, for a broker that lost its retained ones
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
        # A reading from an MGM log line went out on debug/rx already: it is no `r` payload.
        if self.raw_frames and self.meter.reading_source != "log":
            self._publish_raw(payload)
        now = _ms()
        a = self.filter.apply(r, now)
        w = a.watts
        if w is not None and (
                self.last_power is None or abs(w - self.last_power) >= self.min_change_w
                or (self.power_max_ms and time.ticks_diff(now, self.last_power_ms) >= self.power_max_ms)):
            self.last_power = w
            self.last_power_ms = now
            self.mqtt.publish(self.t_power, str(w))
        # Totals come only from the filter: None before our retained ones were read back, and for
        # any value that may not reach HA (zero, missing, a glitch, a jump not yet believed).
        if a.imp_lo is None and a.exp_lo is None:  # pairs (readings.py): never a long int here
            return
        if a.exp_lo is not None and "export" not in self.has:
            self.has.add("export")  # housekeeping announces "energy returned" and "energy net" now
        self.fmt = r.format
        self.state_dirty = True
        if not self.restore_done:
            return
        if self.energy_ms and self.last_energy_ms is not None and \
                time.ticks_diff(now, self.last_energy_ms) < self.energy_ms:
            return
        self._publish_totals()

    def _publish_totals(self):
        f = self.filter
        imp, exp, net = f.text()
        if imp is None and exp is None:
            return
        self.last_energy_ms = _ms()
        p = self.mqtt.publish
        # Our record first (sent first: the outbox keeps order), then the totals: after a reboot
        # the record is never older than the totals HA saw, so the series continues exactly.
        rec = f.record()
        if rec is not None:
            p(self.t_state, rec, True)
        if imp is not None:
            p(self.t_in, str(imp), True)
        if exp is not None:
            p(self.t_out, str(exp), True)
        if net is not None:
            p(self.t_net, str(net), True)

    def _publish_raw(self, payload, error=None):
        d = {
            "time": _utc(),
            "uptime_ms": time.ticks_diff(_ms(), self.start_ms),
            "mgm_version": self.meter.version,
            "cmd": "r",
            "hex": binascii.hexlify(payload).decode(),
        }
        if error:
            d["error"] = error
        self.mqtt.publish(self.base + "/debug/raw", json.dumps(d))

    def on_rx_line(self, cluster, view, n):
        # Every message the module says it received, for capture.py: the way in to unknown layouts.
        # Rate-limited: a chatty module must not flood the broker or the outbox.
        now = _ms()
        if time.ticks_diff(now, self._rx_window_ms) >= 60000:
            self._rx_window_ms = now
            self._rx_budget = RX_LINES_PER_MIN
        if self._rx_budget <= 0:
            self.rx_not_published += 1
            return
        self._rx_budget -= 1
        self.mqtt.publish(self.base + "/debug/rx", json.dumps({
            "time": _utc(), "uptime_ms": time.ticks_diff(now, self.start_ms), "mgm_version": self.meter.version,
            "cmd": "rx", "cluster": "%04x" % cluster, "hex": binascii.hexlify(view[:n]).decode()}))

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
                # A session step, never waiting: our retained totals come in (with their retain
                # flag), discovery and diag go out meanwhile; totals wait for the window's end.
                mq.poll()
                await asyncio.sleep_ms(20)
            mq.unsubscribe(self.base + "/energy/+")
            r = self._retained
            if r:
                log.info("restored totals from the broker: in %s Wh, out %s Wh%s" % (
                    r.get("in"), r.get("out"), ", with our record" if "state" in r else ""))
            self.filter.restore(r)  # from here on totals are published, never below these
            self._retained = None
            self.restore_done = True
            self.state_dirty = True  # flash gets the record we continue from
        self._publish_totals()

    # Commands from HA: a button press or a setting; never a retained message, never a flood.
    REJOIN_EVERY_MS = 60000  # a re-join disturbs the meter's Zigbee link: at most one a minute
    SETTINGS_SAVE_MS = 10000  # settings reach flash at most this often (a flood must not wear it)
    _rejoin_ms = None
    _settings_saved_ms = None
    _clearing = ()  # command topics whose retained message we removed: their empty echo is no command

    def on_message(self, topic, msg, retain=False):
        base = self.base
        if topic.startswith(base + "/energy/"):
            # Our retained totals and record, read back once after boot; anything else is ignored.
            key = topic[len(base) + 8:]
            if not self.restore_done and len(msg) <= 200 and key in ("in", "out", "net", "state"):
                try:
                    v = json.loads(msg)
                except ValueError:
                    v = None
                if isinstance(v, dict) if key == "state" else type(v) is int:
                    self._retained[key] = v
                else:
                    log.warn("ignored the retained value on %s: not %s" % (
                        topic, "our record" if key == "state" else "a whole number of Wh"))
            return
        if topic == self.prefix + "/status":
            # HA's birth message. A retained copy is only its last state: we announced at connect.
            if msg == b"online" and not retain:
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
        if retain:
            return self._retained_command(topic, cmd, msg)
        if not msg and topic in self._clearing:
            self._clearing = tuple(t for t in self._clearing if t != topic)
            return
        text = self._cmd_text(msg)
        if cmd == "rejoin" or cmd == "restart":
            if text != "PRESS":
                return self._refuse(cmd, msg, "expected PRESS (what Home Assistant's button sends)")
            now = _ms()
            if cmd == "restart":
                if self.restart_at is not None:
                    return self._refuse(cmd, msg, "a restart is already under way")
                log.info("command: restart")
                self.restart_at = time.ticks_add(now, 1000)
                return
            last = self._rejoin_ms
            if last is not None and 0 <= time.ticks_diff(now, last) < self.REJOIN_EVERY_MS:
                return self._refuse(cmd, msg, "too soon: at most one re-join a minute (the last was %d s ago)"
                                    % (time.ticks_diff(now, last) // 1000))
            self._rejoin_ms = now
            log.info("command: re-join the meter")
            self.meter.rejoin_requested = True
        elif cmd == "poll_interval":
            v = self._whole(text, 5, 300)
            if v is None:
                return self._refuse(cmd, msg, "expected a whole number of seconds from 5 to 300")
            log.info("command: poll interval %d s" % v)
            if v != self.meter.poll_s:
                self.meter.poll_s = v
                self._settings_changed()
        elif cmd == "raw_frames":
            if text not in ("ON", "OFF"):
                return self._refuse(cmd, msg, "expected ON or OFF")
            log.info("command: raw frames %s" % text)
            if self.raw_frames != (text == "ON"):
                self.raw_frames = text == "ON"
                self._settings_changed()
        elif cmd == "mgm_log":
            if text not in ("ON", "OFF"):
                return self._refuse(cmd, msg, "expected ON or OFF")
            log.info("command: MGM log %s" % text)
            if self.meter.mgm_log != (text == "ON"):
                self.meter.set_mgm_log(text == "ON")
                self._settings_changed()
        else:
            self._refuse(cmd, msg, "unknown command: expected one of rejoin, restart, poll_interval, raw_frames, "
                                   "mgm_log")

    def _retained_command(self, topic, cmd, msg):
        if not msg:
            return  # an empty retained message deletes one: nothing to do
        self._refuse(cmd, msg, "it is a retained message (published with retain, e.g. mosquitto_pub -r or an "
                               "automation): commands act only when sent, never at connect; removed it from the broker")
        # Else it comes back at every connect. Its deletion reaches us as an empty message: no command.
        self.mqtt.publish(topic, "", True)
        self._clearing = self._clearing[-7:] + (topic,)

    def _settings_changed(self):
        self.diag_due = True
        now = _ms()
        last = self._settings_saved_ms
        if last is None or not 0 <= time.ticks_diff(now, last) < self.SETTINGS_SAVE_MS:
            self._settings_saved_ms = now
            self._save_state()
        else:
            self.state_dirty = True  # in effect now; on flash with the next periodic save or at shutdown

    @staticmethod
    def _cmd_text(msg):
        """A command payload as text, or None: commands are short words and numbers."""
        if len(msg) > 32:
            return None
        try:
            return bytes(msg).decode()
        except UnicodeError:
            return None

    @staticmethod
    def _whole(text, lo, hi):
        """A whole number from lo to hi ("60", or "60.0" as some senders write it), else None:
        never float() (inf, nan, 1e999) and never int() of an unbounded string."""
        if text is None:
            return None
        t = text.strip()
        dot = t.find(".")
        if dot >= 0:
            if t[dot + 1:].strip("0"):
                return None
            t = t[:dot]
        if not 0 < len(t) <= 3:
            return None
        for ch in t:
            if ch not in "0123456789":
                return None
        v = int(t)
        return v if lo <= v <= hi else None

    def _refuse(self, cmd, msg, why):
        # Shown short and escaped (a payload is anyone's bytes); logged rate-limited, always counted.
        shown = "<%d bytes>" % len(msg)
        if len(msg) <= 40:
            try:
                shown = repr(bytes(msg).decode())
            except UnicodeError:
                shown = "<%d bytes, not text>" % len(msg)
        self.mqtt.refused("refused command %s=%s: %s" % (cmd if len(cmd) <= 40 else cmd[:40] + "...", shown, why))

    def _diag(self):
        gc.collect()  # free memory means what survives a collection, not what garbage hides
        m = self.meter
        f = self.filter
        return json.dumps({
            "link": m.state,
            "link_text": meter.TEXT[m.state],
            "last_error": log.last_error[:200],
            "last_error_age_s": None if log.last_error_ms is None else
            time.ticks_diff(_ms(), log.last_error_ms) // 1000,
            "mgm_version": m.version,
            "mgm_mac": m.mac,
            "rssi": self.wifi.rssi(),
            "ip": self.wifi.ip(),
            "ssid": self.wifi.ssid(),
            "uptime_s": time.ticks_diff(_ms(), self.start_ms) // 1000,
            "free_mem": gc.mem_free(),
            "readings": m.readings,
            "errors": m.mgm_errors + m.decode_errors,
            "mgm_errors": m.mgm_errors,
            "last_mgm_error": m.last_mgm_error,
            "decode_errors": m.decode_errors,
            "duplicates": m.duplicates,
            "rejected": f.rejected_watts + f.rejected_wh + f.rejected_scale,
            "meter_resets": f.meter_resets,
            "joins": m.joins,
            "poll_interval_s": m.poll_s,
            "raw_frames": "ON" if self.raw_frames else "OFF",
            "mgm_log": "ON" if m.mgm_log else "OFF",
            "mgm_log_text": m.log_text[:200],  # the whole diag must stay well inside one MQTT packet
            "source": m.source,
            "cross_mismatches": m.cross_mismatches,
            "max_step_ms": self.max_step_ms,
            "mqtt_refused": self.mqtt.refusals,
        })

    def _expire_after(self):
        # Three missed updates -> unavailable (HA's expire_after), not a frozen value.
        every = max(self.meter.poll_s, self.cfg["reporting"]["energy_interval_s"],
                    self.cfg["reporting"]["power_max_interval_s"] if self.min_change_w else 0)
        return 3 * every + 30

    def _announcement(self):
        """What to announce now: None, or (only, dev) for _discovery: only 0 (everything), "EXPORT"
        or "EXP" (discovery.entities(only=...)); dev the facts the device entry shows.

        HA reloads an entity whose announcement changed (those with expire_after then show
        "unavailable" until the next reading), so each entity is announced once with its final
        payload, and again only for what changed: the device entry, expire_after, export entities."""
        m = self.meter
        if not (m.identified or m.state == meter.NO_ANSWER
                or time.ticks_diff(_ms(), self.start_ms) > m.ms(ANNOUNCE_WAIT_S)):
            return None  # the MGM version and MAC belong in the first announcement
        # Compared as facts, not as discovery JSON: this runs every housekeeping step, and discovery.py
        # (KBs of heap) is imported only while announcing.
        dev = (m.version, m.mac, self.wifi.mac())
        if self.announced_dev is None or dev != self.announced_dev:
            self.discovery_due = False
            return 0, dev  # the first announcement, or new device details: everything
        if ("export" in self.has) != self.announced_export:
            return "EXPORT", dev  # the meter started to report export: just those entities
        if self.discovery_due:
            self.discovery_due = False
            return 0, dev  # HA came back (birth) or we reconnected: unchanged payloads, HA keeps them
        if self.announced_exp != self._expire_after():
            return "EXP", dev  # the poll interval changed: the value entities' expire_after
        return None

    def _discovery(self, only, dev):
        # Imported for the announcement only (HA start, new entity): its table would otherwise
        # hold several KB of heap for the device's whole life.
        import discovery
        exp = self._expire_after()
        export = "export" in self.has
        self.announced_dev, self.announced_exp, self.announced_export = dev, exp, export
        dj = discovery.device_json(self.node_id, self.cfg["device_name"], VERSION, dev[0], dev[1], dev[2])
        org = discovery.origin_json(VERSION)
        for e in discovery.entities(export, getattr(discovery, only) if only else 0):
            self.mqtt.publish(discovery.config_topic(self.prefix, self.node_id, e),
                              discovery.payload(e, self.base, self.node_id, dj, exp, org), True)
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
                if announcing is None:
                    what = self._announcement()
                    if what is not None:
                        announcing = self._discovery(*what)
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
        wdt = self.board.Watchdog(max(5000, 30000 // self.cfg["debug"]["time_scale"]))  # 30 s on the device
        log.info("vue-utility %s on %s, device %s, MQTT base topic %s" % (
            VERSION, self.board.NAME, self.node_id, self.base))
        # gather, not loose tasks: an exception in any of them (a bug, a MemoryError) reaches
        # main.py, which logs it and restarts, instead of leaving the device half-alive.
        await asyncio.gather(self._step_monitor(), self._link_task(), self.mqtt.run(self.wifi.connected),
                             self._housekeeping(wdt), self.meter.run())
