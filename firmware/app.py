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

import loader
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
PROBATION_S = 300  # an update must connect to MQTT and hear the MGM111 by then, or it is rolled back
# Readings, or housekeeping steps, that found no memory for this long in a row: a clean restart
# (not a crash: main.py's crash policy could stop the app for good after 3 of them).
NO_MEMORY_S = 600


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
        self.version = loader.version or VERSION  # a slot's manifest names what was installed
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
        self.skipped = 0  # readings not published for want of memory (diag)
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
        try:
            self._on_reading(r, payload)
            self._short_r = None
        except MemoryError:
            # No room to publish this one (a transient peak, a fragmented heap, a broker outage
            # with the connect code loaded): skipped, never a crash; the next reading carries the
            # totals on (they are cumulative).
            self.skipped += 1  # a small int: no allocation here
            self._short_r = self._short_of_memory(self._short_r, "publishing readings")

    # Since when readings / housekeeping have found no memory (None: the last reading, the last
    # diag went out).
    _short_r = None
    _short_h = None

    def _short_of_memory(self, since, what):
        """A step skipped for want of memory: said once; restarts the board cleanly after NO_MEMORY_S
        of it (this heap will not recover by itself). -> since, for the next call."""
        gc.collect()
        now = _ms()
        if since is None:
            log.warn("not enough free memory for %s now: skipped, retrying" % what)
            return now
        if time.ticks_diff(now, since) > NO_MEMORY_S * 1000 // self.cfg["debug"]["time_scale"]:
            log.error("no free memory for %s for %d minutes: restarting" % (what, NO_MEMORY_S // 60))
            try:
                self.shutdown()  # state.json and "offline", if there is room for them
            except MemoryError:
                pass
            self.board.reset()
        return since

    def _on_reading(self, r, payload):
        # A reading from an MGM log line went out on debug/rx already: it is no `r` payload.
        if self.raw_frames and self.meter.reading_source != "log":
            self._publish_raw(payload)
        now = _ms()
        a = self.filter.apply(r, now)
        w = a.watts
        if w is not None and (
                self.last_power is None or abs(w - self.last_power) >= self.min_change_w
                or (self.power_max_ms and time.ticks_diff(now, self.last_power_ms) >= self.power_max_ms)):
            self.mqtt.publish(self.t_power, str(w))
            self.last_power = w  # after the publish: one skipped for want of memory is not "sent"
            self.last_power_ms = now
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
        self.last_energy_ms = _ms()  # queued, all of them (a MemoryError above: the next reading)

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
        mq.subscribe(self.base + "/ota/release")  # retained: the release on the broker, if any
        self.ota_dirty = True
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

    # Commands from HA (commands.py) keep their state here: the last re-join, the last settings save,
    # command topics whose retained message was removed (their empty echo is no command).
    _rejoin_ms = None
    _settings_saved_ms = None
    _clearing = ()
    # Updates over the air (ota.py, imported only while needed): the release on the broker (checked),
    # the install running, what the update entity says; ota_dirty: <base>/ota/state is due.
    ota_release = None
    ota_start = None  # the release to install, from the next housekeeping step
    ota_job = None
    ota_pct = None
    ota_note = ""
    ota_dirty = True

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
        if topic.startswith(base + "/ota/"):
            if topic == base + "/ota/release":
                self._ota().on_release(self, msg)
            elif self.ota_job is not None and topic == self.ota_job.want:
                self.ota_job.got = msg  # the chunk the install waits for
            return
        if not topic.startswith(base + "/cmd/"):
            return
        # Commands are rare: their code is in memory only while they come (the next housekeeping
        # step drops it). No room for it now: mqtt.py says the message was not handled.
        if "commands" not in sys.modules:
            gc.collect()  # its code goes into the holes garbage leaves, not on top of them
        import commands
        commands.handle(self, topic, topic[len(base) + 5:], msg, retain)

    def _ota(self):
        if "ota" not in sys.modules:
            gc.collect()  # its code goes into the holes garbage leaves, not on top of them
        import ota
        return ota

    def _start_install(self):
        gc.collect()
        import ota_job  # the install's code: in memory only while an install runs
        job = ota_job.Job(self, self.ota_start)
        asyncio.create_task(job.run())
        # Only now: an install that found no memory to start in is started at the next step.
        self.ota_job = job
        self.ota_start = None
        self.ota_dirty = True

    def _probation(self):
        """The first minutes of an app installed over the air (loader.trial): healthy = connected
        to MQTT and the MGM111 answers; then it stays. Not by PROBATION_S: the previous app."""
        mq = self.mqtt
        if mq.connected and self.meter.identified:
            import probation
            probation.confirm()
            sys.modules.pop("probation", None)
            self.ota_note = ""
            self.ota_dirty = True
            log.info("update: version %s is healthy (MQTT connected, the MGM111 answers): it stays"
                     % self.version)
        elif time.ticks_diff(_ms(), self.start_ms) > PROBATION_S * 1000 // self.cfg["debug"]["time_scale"]:
            what = "no MQTT connection" if not mq.connected else "no answer from the MGM111"
            import probation
            probation.rollback("%s within %d minutes of its first boot" % (what, PROBATION_S // 60))
            self.shutdown()
            self.board.reset()

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
            "skipped_no_memory": self.skipped,
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
        # One entity per step, and no more of the discovery code in memory than the step needs:
        # the row (discovery_rows.py) and then the payload code (discovery.py) are imported and
        # dropped again, each after a collection, so that they go into the holes garbage leaves.
        # Together, or kept for the whole announcement (whose steps may wait seconds for a busy
        # outbox), they were the device's heap peak. The payload goes out in pieces (Mqtt.Parts).
        exp = self._expire_after()
        export = "export" in self.has
        self.announced_dev, self.announced_exp, self.announced_export = dev, exp, export
        k = 0
        said = False
        while True:
            t = None
            try:
                gc.collect()
                import discovery_rows
                row = discovery_rows.pick(export, only, k)
                discovery_rows = None
                sys.modules.pop("discovery_rows", None)
                if row is None:
                    return
                gc.collect()
                import discovery
                e = discovery.parse(row)
                t = discovery.config_topic(self.prefix, self.node_id, e)
                dj = discovery.device_json(self.node_id, self.cfg["device_name"], self.version, dev[0], dev[1], dev[2])
                self.mqtt.publish_parts(t, discovery.parts(e, self.base, self.node_id, dj, exp,
                                                           discovery.origin_json(self.version)), True)
                k += 1
            except MemoryError:
                # No room for this step now (a fragmented heap): it is tried again at the next
                # step. Never a restart of the firmware for an announcement.
                if not said:
                    said = True
                    log.warn("not enough free memory to announce entity %d to Home Assistant now; "
                             "retrying" % (k + 1))
                t = None
            discovery_rows = discovery = None
            sys.modules.pop("discovery_rows", None)
            sys.modules.pop("discovery", None)
            row = e = dj = None
            yield t

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
        waiting = None  # the last discovery topic queued
        crash_log = True
        while True:
            wdt.feed()
            short = False
            try:
                self.wifi.check()
                mq = self.mqtt
                self.leds.set("wifi", mq.connected)
                if mq.connected:
                    if announcing is None:
                        what = self._announcement()
                        if what is not None:
                            announcing = self._discovery(*what)
                    if announcing is not None and len(mq.outbox) < 4 and waiting not in mq.outbox:
                        # One entity per step (a burst of 20 would block the loop), only while little
                        # is queued, and once the last one is sent: ~0.7 KB each, the heap's peak.
                        try:
                            waiting = next(announcing)
                        except StopIteration:
                            announcing = None
                            self.diag_due = True
                        except MemoryError:
                            # Out of the generator's own handler: the generator is finished, with
                            # entities left unannounced. All of them again, at a later step.
                            announcing = None
                            self.discovery_due = True
                            raise
                    if self.ota_dirty and announcing is None:
                        job = self.ota_job
                        if job is not None:
                            mq.publish(self.base + "/ota/state", job.state_json(), True)
                            mq.publish(self.base + "/ota/device", job.device_json(), True)
                        else:
                            ota = self._ota()
                            mq.publish(self.base + "/ota/state", ota.state_json(self), True)
                            mq.publish(self.base + "/ota/device", ota.device_json(self), True)
                        self.ota_dirty = False  # published (a MemoryError above: tried again next step)
                    # Not while an install runs (its state goes out instead): the diag is ~1 KB, and the
                    # install's modules and manifest are the heap's peak then.
                    if self.ota_job is None and (
                            self.diag_due or time.ticks_diff(_ms(), last_diag) >= self.diag_every_ms):
                        mq.publish(self.base + "/diag", self._diag(), True)
                        self.diag_due = False  # sent: a MemoryError above tries it again next step
                        last_diag = _ms()
                if self.state_dirty and time.ticks_diff(_ms(), last_save) >= STATE_SAVE_S * 1000:
                    self._save_state()
                    last_save = _ms()
            except MemoryError:
                short = True
            try:
                # Also after a step that found no memory: what these free is what the next one needs.
                ota = job = None
                sys.modules.pop("commands", None)  # imported by on_message while commands come
                sys.modules.pop("ota", None)  # imported while a release is checked or the state published
                if self.ota_job is None:
                    sys.modules.pop("ota_job", None)  # imported while an install runs
                    sys.modules.pop("probation", None)
                    if self.ota_start is not None:
                        self._start_install()
                if loader.trial is not None:
                    self._probation()
                if crash_log and time.ticks_diff(_ms(), self.start_ms) > CRASH_CLEAR_MS:
                    crash_log = False
                    _remove("crash.log")
                if self.restart_at is not None and time.ticks_diff(_ms(), self.restart_at) >= 0:
                    self.shutdown()
                    self.board.reset()
            except MemoryError:
                short = True
            # No room for a part of this step (an announcement, the diag, the update entity's state, a
            # flash save, an install's start): it is tried again at the next step, never a crash for
            # it. Restarted only when no step has found room for NO_MEMORY_S.
            self._short_h = self._short_of_memory(self._short_h, "housekeeping (diagnostics, update "
                                                  "state, saving, installing)") if short else None
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
                self.mqtt.disconnect()  # queued values, "offline", DISCONNECT
            except OSError:
                pass

    async def main(self):
        self.leds.set("power", True)
        self.wifi.start()
        wdt = self.board.Watchdog(max(5000, 30000 // self.cfg["debug"]["time_scale"]))  # 30 s on the device
        log.info("vue-utility %s on %s, device %s, MQTT base topic %s" % (
            self.version, self.board.NAME, self.node_id, self.base))
        f = loader.failed
        if f and loader.trial is None:
            log.warn("the update to version %s was rolled back: %s" % (f.get("version"), f.get("why")))
        # gather, not loose tasks: an exception in any of them (a bug, a MemoryError) reaches
        # main.py, which logs it and restarts, instead of leaving the device half-alive.
        await asyncio.gather(self._step_monitor(), self._link_task(), self.mqtt.run(self.wifi.connected),
                             self._housekeeping(wdt), self.meter.run())
