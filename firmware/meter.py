# MeterSession: talks to the MGM111 as protocol.md's "Startup and polling" says, decodes readings,
# suppresses duplicates, and diagnoses in words what is wrong when readings stop.
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

import decoders
import log
from mgm_uart import CMD_ERROR, CMD_INSTALL_CODE, CMD_JOIN, CMD_MAC, CMD_READING, CMD_VERSION

# Link states, published on MQTT; TEXT says what the user should do about each.
STARTING = "starting"
OK = "ok"
NO_READINGS = "no_readings"
NO_ANSWER = "no_answer"
TEXT = {
    STARTING: "starting: asking the MGM111 for its version",
    OK: "receiving meter readings",
    NO_READINGS: "the MGM111 answers but the meter sends no readings: the meter pairing is lost "
    "(re-joining; if it persists, ask your utility to re-pair the device)",
    NO_ANSWER: "the MGM111 does not answer at all: Zigbee module or wiring fault "
    "(re-initialising the UART; power-cycle the device if it persists)",
}

ANSWER_MS = 1500  # an MGM answer normally takes a few ms
VERSION_RETRY_S = 3
REJOIN_FIRST_S = 60
REJOIN_MAX_S = 3600  # re-joins back off to once an hour: an endless join loop helps nobody
UART_REINIT_S = 120  # silence this long -> re-create the UART (a stuck peripheral, no reboot)


def _ms():
    return time.ticks_ms()


def _since(t):
    return time.ticks_diff(_ms(), t)


class MeterSession:
    def __init__(self, link_factory, on_reading, on_state, on_undecoded, poll_s, startup_delay_s,
                 time_scale=1):
        self.link = link_factory(self._frame, self._mgm_log)
        self.on_reading = on_reading  # (decoders.Reading, raw payload memoryview)
        self.on_state = on_state  # (state) when the link state changes
        self.on_undecoded = on_undecoded  # (payload, message) for layouts we cannot read
        self.poll_s = poll_s
        self.poll_now = False
        self.startup_delay_s = startup_delay_s
        # Tests and the soak run compress every wait (not the answer timeout) by this factor.
        self.scale = time_scale
        self.state = STARTING
        self.version = None
        self.mac = None
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
        self.last_rejoin = None
        self.rejoin_wait_s = REJOIN_FIRST_S
        self._err_logged = 0

    def ms(self, seconds):
        """A wait of `seconds` in ms, compressed by the time scale."""
        return int(seconds * 1000 // self.scale)

    # --- frames (called from the link's poll, synchronously) ---
    def _frame(self, cmd, payload):
        if cmd == CMD_READING:
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

    def _mgm_log(self, text):
        log.info("MGM: " + text)

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
        try:
            r = decoders.decode(payload, self._reading)
        except decoders.DecodeError as e:
            self.decode_errors += 1
            # Repeating faults are logged at 1, 10, 100, ... so the log stays readable for years.
            if self.decode_errors >= self._err_logged * 10 or self._err_logged == 0:
                self._err_logged = self.decode_errors
                log.warn("cannot decode reading (MGM v%s): %s" % (self.version, e))
            self.on_undecoded(payload, str(e))
            return
        self.readings += 1
        self.last_good = _ms()
        self._set_state(OK)
        self.on_reading(r, payload)

    def _set_state(self, state):
        if state != self.state:
            self.state = state
            if state == OK:
                log.info("link: " + TEXT[state])
                self.rejoin_wait_s = REJOIN_FIRST_S
            else:
                log.warn("link: " + TEXT[state])
            self.on_state(state)

    # --- the conversation ---
    async def run(self):
        if self.startup_delay_s:
            await asyncio.sleep_ms(self.ms(self.startup_delay_s))
        await self.link.drain()
        await self._identify()
        while True:
            t0 = _ms()
            await self.link.ask(CMD_READING, ANSWER_MS)
            await self._check_health()
            if self.rejoin_requested:
                self.rejoin_requested = False
                await self._join("requested over MQTT")
            while _since(t0) < self.ms(self.poll_s) and not self.poll_now and not self.rejoin_requested:
                await asyncio.sleep_ms(min(50, self.ms(self.poll_s)))
            self.poll_now = False

    async def _identify(self):
        t0 = _ms()
        wait = VERSION_RETRY_S
        while not await self.link.ask(CMD_VERSION, ANSWER_MS):
            if _since(t0) >= self.ms(10):
                self._set_state(NO_ANSWER)
                wait = min(wait * 2, 30)  # keep trying, but not 20 times a minute forever
            if _since(t0) >= self.ms(UART_REINIT_S):
                log.warn("no answer from the MGM111 for %d s: re-initialising the UART" % UART_REINIT_S)
                self.link.reinit()
                t0 = _ms()
            await asyncio.sleep_ms(self.ms(wait))
        log.info("MGM111 firmware version %s" % self.version)
        for cmd in (CMD_MAC, CMD_INSTALL_CODE):
            for _ in range(3):
                if await self.link.ask(cmd, ANSWER_MS):
                    break
        log.info("MGM111 MAC %s, install code %s" % (self.mac, "present (not shown)" if self.has_install_code else "missing"))
        await self._join("startup")
        self.last_good = _ms()

    async def _join(self, why):
        self.joins += 1
        self.last_rejoin = _ms()
        ok = await self.link.ask(CMD_JOIN, ANSWER_MS)
        log.info("join (%s): MAC %s, install code %s, status %s" % (
            why, self.mac, "present" if self.has_install_code else "missing",
            self.join_status if ok else "no answer"))

    def stale_ms(self):
        # Peers re-join after ~30 s without a reading; with slow polling allow three missed polls.
        return self.ms(max(3 * self.poll_s, 30))

    async def _check_health(self):
        if _since(self.last_good) < self.stale_ms():
            return
        # Readings stopped. Does the module answer anything at all?
        if await self.link.ask(CMD_VERSION, ANSWER_MS):
            self._set_state(NO_READINGS)
            if self.last_rejoin is None or _since(self.last_rejoin) >= self.ms(self.rejoin_wait_s):
                await self._join("no reading for %d s" % (_since(self.last_good) * self.scale // 1000))
                self.rejoin_wait_s = min(self.rejoin_wait_s * 2, REJOIN_MAX_S)
        else:
            self._set_state(NO_ANSWER)
            if _since(self.link.last_answer) >= self.ms(UART_REINIT_S):
                log.warn("no answer from the MGM111 for %d s: re-initialising the UART" % UART_REINIT_S)
                self.link.reinit()
                self.link.last_answer = _ms()
