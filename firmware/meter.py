# MeterSession: talks to the MGM111 as protocol.md's "Startup and polling" says, decodes readings,
# suppresses duplicates, and diagnoses in words what is wrong when readings stop. Optionally ("MGM
# log" mode) it also reads the module's own received-message log lines: a second source of readings
# for modules whose `r` layout nobody can decode (v4, v6), and a cross-check where both decode. That
# mode's code (meter_log.py, decoders/mgm_log.py) is imported only while it is on: heap is scarce
# and most modules never need it. Log lines with the mode off are judged here (received-message
# line or not, may it show a secret) and other text goes to the console.
import gc
import sys
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

import decoders
import log
from mgm_uart import CMD_ERROR, CMD_INSTALL_CODE, CMD_JOIN, CMD_MAC, CMD_READING, CMD_VERSION

# Link states, published on MQTT; TEXT says what the user should do about each.
STARTING = "starting"
OK = "ok"
NO_READINGS = "no_readings"
NO_ANSWER = "no_answer"
UNKNOWN_LAYOUT = "unknown_layout"
NO_VALUES = "no_values"
STATES = (STARTING, OK, NO_READINGS, NO_ANSWER, UNKNOWN_LAYOUT, NO_VALUES)
TEXT = {
    STARTING: "starting: asking the MGM111 for its version",
    OK: "receiving meter readings",
    NO_READINGS: "the MGM111 answers but the meter sends no readings: the meter pairing is lost "
    "(re-joining; if it persists, ask your utility to re-pair the device)",
    NO_ANSWER: "the MGM111 does not answer at all: Zigbee module or wiring fault "
    "(re-initialising the UART; power-cycle the device if it persists)",
    # The meter is talking: a re-join would not help and may drop a good pairing (protocol.md).
    UNKNOWN_LAYOUT: "the meter answers every poll, in a layout this firmware cannot read yet (no "
    "re-joins needed): turn on 'MGM log' for readings from the module's log, and 'Publish raw "
    "frames' to record a capture (README)",
    NO_VALUES: "the meter answers every poll, but its readings carry no usable values (missing "
    "markers or no scale; see Last error): usually weak Zigbee reception, readings resume by themselves",
}

_ANSWER_MS = const(1500)  # an MGM answer normally takes a few ms
_VERSION_RETRY_S = const(3)
_REJOIN_FIRST_S = const(60)
_REJOIN_MAX_S = const(3600)  # re-joins back off to once an hour: an endless join loop helps nobody
_UART_REINIT_S = const(120)  # silence this long -> re-create the UART (a stuck peripheral, no reboot)

# Where readings come from (diagnostics; source_text says it in words).
SOURCE_NONE = "none"
SOURCE_R = "r"  # the module's answers to `r` polls
SOURCE_LOG = "log"  # the module's received-message log lines (MGM log mode)
SOURCE_BOTH = "r+log (cross-checked)"

_LOGLEVEL_ON = const(20)  # the module prints a line per message it receives (protocol.md)
_LOGLEVEL_OFF = const(10)
_LOG_PRINT_MS = const(1000)  # the module's other log text reaches the console at most this often


def _ms():
    return time.ticks_ms()


def _since(t):
    return time.ticks_diff(_ms(), t)


class MeterSession:
    # MGM log mode's figures (diagnostics), counted by meter_log.py on this object: class-level
    # defaults, so a session that never turns the mode on holds none of them.
    rx_lines = 0  # received-message lines read (any cluster)
    rx_bad = 0  # received-message lines cut short or garbled: not used
    log_readings = 0  # readings delivered from log lines
    log_duplicates = 0
    log_undecodable = 0  # 0x0702 lines whose records the ZCL decoder rejected
    cross_checked = 0  # `r` and log readings of one meter message that agreed
    cross_mismatches = 0  # ... that disagreed (reported, never averaged)
    last_rx_error = None  # why the last unreadable received-message line was rejected
    _log_pub_ms = None  # when a log reading was last published
    _cross_ms = None  # when an `r` reading was last cross-checked against a log reading

    def __init__(self, link_factory, on_reading, on_state, on_undecoded, poll_s, startup_delay_s,
                 time_scale=1, mgm_log=False, on_rx_line=None):
        self.link = link_factory(self._frame, self._mgm_log)
        # (decoders.Reading, payload memoryview): from an `r` answer, or in MGM log mode from a log
        # line (then the payload is the line's ZCL bytes); reading_source says which ("r", "log").
        self.on_reading = on_reading
        self.on_state = on_state  # (state) when the link state changes
        self.on_undecoded = on_undecoded  # (payload, message) for layouts we cannot read
        # (cluster, memoryview, n) per received-message line in MGM log mode: the ZCL bytes are
        # view[:n], valid during the call only. Key material (cluster 0x0800) comes header-only.
        self.on_rx_line = on_rx_line
        self.poll_s = poll_s
        self.poll_now = False
        self.startup_delay_s = startup_delay_s
        # Tests and the soak run compress every wait (not the answer timeout) by this factor.
        self.scale = time_scale
        self.state = STARTING
        self.version = None
        self.mac = None
        self.identified = False  # f, m and i asked: what the device announcement shows is known
        self.has_install_code = False
        self.join_status = None
        self.readings = 0
        self.duplicates = 0
        self.decode_errors = 0
        self.mgm_errors = 0
        self.last_mgm_error = None
        self.joins = 0
        self.rejoin_requested = False
        self._reading = decoders.Reading()
        self._last = bytearray(256)  # the last reading payload, to spot duplicates without allocating
        self._last_len = -1
        self.last_good = _ms()
        self.last_unreadable = None  # when the module last answered a poll with a payload we cannot read
        self.unreadable_state = NO_VALUES
        self.last_rejoin = None
        self.rejoin_wait_s = _REJOIN_FIRST_S
        self._err_logged = 0
        self.reading_source = None  # "r" or "log": where the reading handed to on_reading came from
        self._r_ok_ms = None  # when an `r` answer last decoded
        self._r_answer_ms = _ms()  # ... last came
        # --- MGM log mode: meter_log.LogMode while on (its buffers too), else None ---
        self.mgm_log = False
        self._lm = None
        self._level_due = False  # `loglevel` to send from the session's task
        self.log_ignored = False  # no received-message line came after `loglevel 20`
        self._answers_since_level = 0
        self._rx_since_level = 0
        self._lines_since_level = 0
        self._answers_since_rx = 0
        self._quiet_asked = False
        self._print_ms = None
        self.mgm_lines = 0  # the module's other log lines
        self.lines_not_shown = 0  # ... not printed (console rate limit)
        self.redacted_lines = 0  # lines (or payloads) withheld: they may show keys or the install code
        if mgm_log:
            self.set_mgm_log(True)

    def ms(self, seconds):
        """A wait of `seconds` in ms, compressed by the time scale."""
        return int(seconds * 1000 // self.scale)

    # --- frames (called from the link's poll, synchronously) ---
    def _frame(self, cmd, payload):
        if cmd == CMD_READING:
            self._r_answer_ms = _ms()
            self._answers_since_level += 1
            self._answers_since_rx += 1
            self._on_reading(payload)
        elif cmd == CMD_VERSION and len(payload) >= 1:
            self.version = decoders.decode_version(payload)
        elif cmd == CMD_MAC and len(payload) == 8:
            self.mac = decoders.decode_mac(payload)
        elif cmd == CMD_INSTALL_CODE and len(payload) == 8:
            # The code is a secret (it pairs the meter): only the fact that it exists is kept.
            self.has_install_code = any(payload)
        elif cmd == CMD_JOIN and len(payload) >= 1:
            self.join_status = payload[0]
        elif cmd == CMD_ERROR:
            self.mgm_errors += 1
            self.last_mgm_error = payload[0] if len(payload) else None

    # --- the module's log lines (called from the link's poll, synchronously) ---
    def _mgm_log(self, buf, a, b):
        # buf[a:b] is the parser's line buffer, valid during this call only (FrameParser).
        lm = self._lm
        if lm is not None:
            lm.line(buf, a, b)  # MGM log mode: received-message lines are read there
            return
        if decoders.rx_start(buf, a, b) >= 0:
            if not self._quiet_asked:
                # Left verbose (e.g. the mode was on before a reboot): ~200 characters per
                # message for nothing. Asked once per boot.
                self._quiet_asked = True
                self._level_due = True
                log.info("MGM log is off but the MGM111 prints received-message lines: "
                         "asking it to be quiet (loglevel 10)")
            return
        self._other_line(buf, a, b)

    def _other_line(self, buf, a, b):
        self.mgm_lines += 1
        self._lines_since_level += 1
        secret = decoders.may_hold_secret(buf, a, b)
        if secret:
            self.redacted_lines += 1
        # The console is slow (and on the ESP32 a print blocks): a chatty module must not stall
        # the loop. Counted, not shown.
        now = _ms()
        if self._print_ms is not None and time.ticks_diff(now, self._print_ms) < _LOG_PRINT_MS:
            self.lines_not_shown += 1
            return
        self._print_ms = now
        if secret:
            log.info("MGM: (a line of %d characters not shown: it may hold a key or the install "
                     "code)" % (b - a))
        else:
            log.info("MGM: " + str(memoryview(buf)[a:b], "ascii"))

    def _deliver(self, r, payload, source):
        self.readings += 1
        self.last_good = _ms()
        self._set_state(OK)
        self.reading_source = source
        self.on_reading(r, payload)

    def _is_duplicate(self, payload):
        n = len(payload)
        last = self._last
        if n == self._last_len and n <= len(last):
            for i in range(n):
                if last[i] != payload[i]:
                    break
            else:
                return True
        if n <= len(last):
            last[:n] = payload
            self._last_len = n
        return False

    def _on_reading(self, payload):
        if self._is_duplicate(payload):
            self.duplicates += 1
            return
        lm = self._lm
        try:
            r = decoders.decode(payload, self._reading)
        except decoders.DecodeError as e:
            self.decode_errors += 1
            if lm is not None:
                lm.r_unreadable()  # the log line of this meter message, if it came first, stands in
            # Repeating faults are logged at 1, 10, 100, ... so the log stays readable for years.
            # In MGM log mode the log lines may stand in: their own faults are reported (a module
            # that prints none, lines that cannot be read), and the link state waits for them.
            log_may = lm is not None and not self.log_ignored
            if self.decode_errors >= self._err_logged * 10 or self._err_logged == 0:
                self._err_logged = self.decode_errors
                text = "cannot decode reading (MGM v%s): %s" % (self.version, e)
                if log_may:
                    log.info(text + " (MGM log mode: readings can come from the MGM111's log lines)")
                else:
                    log.warn(text)
            self.last_unreadable = _ms()
            self.unreadable_state = UNKNOWN_LAYOUT if isinstance(e, decoders.UnknownLayout) else NO_VALUES
            if not log_may and (self.readings == 0 or _since(self.last_good) >= self.stale_ms()):
                self._set_state(self.unreadable_state)  # say it now, not after the stale timeout
            self.on_undecoded(payload, str(e))
            return
        self._r_ok_ms = _ms()
        if lm is not None and lm.r_read(r):
            return  # this meter message already went out from its log line: not twice
        self._deliver(r, payload, SOURCE_R)

    # --- MGM log mode ---
    def set_mgm_log(self, on):
        """Turn MGM log mode on or off at run time: `loglevel 20` / `loglevel 10` goes out from
        the session's task within ~50 ms (never from the caller, e.g. an MQTT callback). On, its
        code is imported (a MemoryError leaves the mode off); off, it is dropped again."""
        on = bool(on)
        if on == self.mgm_log:
            return
        if on:
            gc.collect()  # its code goes into the holes garbage leaves, not on top of them
            import meter_log
            self._lm = meter_log.LogMode(self)
        else:
            self._lm = None
            for name in ("meter_log", "decoders.mgm_log"):
                sys.modules.pop(name, None)
            try:
                del decoders.mgm_log  # the package holds its submodule too
            except (AttributeError, KeyError):  # MicroPython says KeyError
                pass
        self.mgm_log = on
        self._level_due = True
        self.log_ignored = False

    def _send_level_if_due(self):
        if not self._level_due:
            return
        self._level_due = False
        level = _LOGLEVEL_ON if self.mgm_log else _LOGLEVEL_OFF
        self.link.set_loglevel(level)
        self._answers_since_level = 0
        self._rx_since_level = 0
        self._lines_since_level = 0
        self._answers_since_rx = 0
        log.info("MGM log %s: sent 'loglevel %d' to the MGM111" % ("on" if self.mgm_log else "off", level))

    def _check_log_mode(self):
        if self._lm is not None and not self._level_due:
            self._lm.check()

    @property
    def source(self):
        """Where readings come from now: "r", "log", "r+log (cross-checked)" or "none"."""
        st = self.stale_ms()
        r = self._r_ok_ms is not None and _since(self._r_ok_ms) < st
        if r:
            if self._cross_ms is not None and _since(self._cross_ms) < st:
                return SOURCE_BOTH
            return SOURCE_R
        if self._log_pub_ms is not None and _since(self._log_pub_ms) < st:
            return SOURCE_LOG
        return SOURCE_NONE

    @property
    def source_text(self):
        """The source in words (diagnostics and tests; imports meter_log)."""
        import meter_log
        return meter_log.source_text(self)

    @property
    def log_text(self):
        """MGM log mode's state in words (diagnostics)."""
        return "off" if self._lm is None else self._lm.text()

    def _set_state(self, state):
        if state != self.state:
            self.state = state
            if state == OK:
                log.info("link: " + TEXT[state])
                self.rejoin_wait_s = _REJOIN_FIRST_S
            else:
                log.warn("link: " + TEXT[state])
            self.on_state(state)

    # --- the conversation ---
    async def run(self):
        if self.startup_delay_s:
            await asyncio.sleep_ms(self.ms(self.startup_delay_s))
        await self.link.drain()
        self._send_level_if_due()
        await self._identify()
        while True:
            t0 = _ms()
            self._send_level_if_due()
            await self.link.ask(CMD_READING, _ANSWER_MS)
            self._check_log_mode()
            await self._check_health()
            if self.rejoin_requested:
                self.rejoin_requested = False
                await self._join("requested over MQTT")
            while _since(t0) < self.ms(self.poll_s) and not self.poll_now and not self.rejoin_requested:
                self._send_level_if_due()  # a switch from HA takes effect now, not at the next poll
                await asyncio.sleep_ms(min(50, self.ms(self.poll_s)))
            self.poll_now = False

    async def _identify(self):
        t0 = _ms()
        wait = _VERSION_RETRY_S
        while not await self.link.ask(CMD_VERSION, _ANSWER_MS):
            if _since(t0) >= self.ms(10):
                self._set_state(NO_ANSWER)
                wait = min(wait * 2, 30)  # keep trying, but not 20 times a minute forever
            if _since(t0) >= self.ms(_UART_REINIT_S):
                log.warn("no answer from the MGM111 for %d s: re-initialising the UART" % _UART_REINIT_S)
                self.link.reinit()
                self._level_due = self.mgm_log
                t0 = _ms()
            await asyncio.sleep_ms(self.ms(wait))
        log.info("MGM111 firmware version %s" % self.version)
        for cmd in (CMD_MAC, CMD_INSTALL_CODE):
            for _ in range(3):
                if await self.link.ask(cmd, _ANSWER_MS):
                    break
        log.info("MGM111 MAC %s, install code %s" % (self.mac, "present (not shown)" if self.has_install_code else "missing"))
        self.identified = True
        await self._join("startup")
        self.last_good = _ms()

    async def _join(self, why):
        self.joins += 1
        self.last_rejoin = _ms()
        ok = await self.link.ask(CMD_JOIN, _ANSWER_MS)
        log.info("join (%s): MAC %s, install code %s, status %s" % (
            why, self.mac, "present" if self.has_install_code else "missing",
            self.join_status if ok else "no answer"))

    def stale_ms(self):
        # Peers re-join after ~30 s without a reading; with slow polling allow three missed polls.
        return self.ms(max(3 * self.poll_s, 30))

    async def _check_health(self):
        if _since(self.last_good) < self.stale_ms():
            return
        if self.last_unreadable is not None and _since(self.last_unreadable) < self.stale_ms():
            # The module answers our polls; we just cannot read them. Not a pairing problem.
            self._set_state(self.unreadable_state)
            return
        # Readings stopped. Does the module answer anything at all?
        if await self.link.ask(CMD_VERSION, _ANSWER_MS):
            self._set_state(NO_READINGS)
            if self.last_rejoin is None or _since(self.last_rejoin) >= self.ms(self.rejoin_wait_s):
                await self._join("no reading for %d s" % (_since(self.last_good) * self.scale // 1000))
                self.rejoin_wait_s = min(self.rejoin_wait_s * 2, _REJOIN_MAX_S)
        else:
            self._set_state(NO_ANSWER)
            if _since(self.link.last_answer) >= self.ms(_UART_REINIT_S):
                log.warn("no answer from the MGM111 for %d s: re-initialising the UART" % _UART_REINIT_S)
                self.link.reinit()
                self._level_due = self.mgm_log
                self.link.last_answer = _ms()
