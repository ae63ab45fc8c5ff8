"""A simulated MGM111 Zigbee module on a pseudo-terminal, speaking protocol.md byte for byte.

Library (tests, sim/run_sim.py):
    sim = MgmSim(version=8, speedup=600); sim.start(); ... open sim.path ...; sim.stop()
    sim.set_fault('garbage', count=3); sim.clear_faults()
CLI:
    python3 sim/mgm_sim.py --version 8 [--fault NAME[:k=v,...] ...] [--link /tmp/mgm0] [--verbose]
    then type `fault NAME [k=v ...]`, `clear`, `status` or `quit` on stdin.

The meter behind the module is a model house with solar panels: a load of a few hundred watts plus
appliance bursts, minus a solar curve peaking at midday. Power is negative (export) in the middle of
the simulated day. The import and export counters only increase, by exactly the reported power times
the simulated time since the previous reading, so a consumer can check one against the other.
At `loglevel 20` the module also prints its received-message lines (protocol.md, "The MGM111's own
command line"): per reading one `RX ... clus 0x0702 ... payload[...]` line with the meter message's
ZCL bytes, a `-- Got Meter Rsp` line, now and then a line for another cluster; `rx_lines` turns
them off (default: off for v2, where it is not known), LOG_FAULTS break them. Versions 4 and 6
answer `r` in a made-up layout no decoder reads (as 'unknown' does), so their readings can only
come from those lines. Every byte received is kept in `received` (tests check that nothing but
SAFE_COMMANDS was ever written to the module).
CPython only (threads, pty, termios).
"""
import argparse
import math
import os
import random
import select
import sys
import termios
import threading
import time
import tty

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgm_payloads as P  # noqa: E402
from mgm_lines import got_meter_rsp, rx_line  # noqa: E402

CMD_R, CMD_J, CMD_M, CMD_I, CMD_F, CMD_E = (ord(c) for c in "rjmife")
UNKNOWN_VERSION_BYTE = 4  # 'unknown' reports an undocumented version (4 and 6 are seen in the field)
UNKNOWN_LEN = 64

# Faults tied to reading requests (count = readings affected); the others count any answer.
READING_FAULTS = ("no_readings", "truncate", "bad_terminator", "lying_length", "duplicate", "errors",
                  "wh_glitch", "wh_step", "missing", "dollar", "zeros")
ANSWER_FAULTS = ("silence", "garbage", "log_text")
# The module's own log lines (issue 13). rx_cut: the next received-message line stops halfway
# (keep=chars, crlf=0 to lose its line end too); rx_split: a `$` frame in the middle of it (at=char);
# rx_mismatch: its values disagree with the `r` answer (delta=W); key_lines: the module prints a
# network key, its install code and a Key Establishment message; ignore_loglevel: `loglevel` has no
# effect (a module that never prints received-message lines).
LOG_FAULTS = ("rx_cut", "rx_split", "rx_mismatch", "key_lines", "ignore_loglevel")
FAULTS = ANSWER_FAULTS + READING_FAULTS + LOG_FAULTS
UNKNOWN_LAYOUT = (4, 6, "unknown")  # `r` answers in a layout nobody has published
# All a well-behaved host ever writes to the module (protocol.md).
SAFE_COMMANDS = (b"$r\r", b"$j\r", b"$m\r", b"$i\r", b"$f\r", b"\r", b"loglevel 10\r", b"loglevel 20\r")
OTHER_CLUSTERS = (0x0000, 0x000A, 0x0700, 0x0703)
# These describe one event: without an explicit count they fire once.
ONE_SHOT = ("wh_glitch", "wh_step")

LOG_LINES = (
    "[I] zb: poll 0x0702 ep 1 rssi -%d lqi %d",
    "[D] ezsp: stack status 0x90 (network up), tx ok %d",
    "[I] sm: read attr rsp seq %d len 44",
    "[W] zb: mac ack timeout, retry %d",
)


class MeterModel:
    """House load minus solar; counters integrate the reported power over simulated time."""

    def __init__(self, rng, start_s, import_wh, export_wh, base_w=450, solar_w=4000):
        self.rng = rng
        self.t = start_s
        self.import_wh = float(import_wh)
        self.export_wh = float(export_wh)
        self.base_w = base_w
        self.solar_w = solar_w
        self.power_w = self._power(start_s)
        self._burst_until = -1.0
        self._burst_w = 0

    def _power(self, t):
        h = (t / 3600.0) % 24
        load = self.base_w + 250 * math.sin(2 * math.pi * (h - 16) / 24) + self.rng.randint(-40, 40)
        if getattr(self, "_burst_until", -1) > t:
            load += self._burst_w
        solar = self.solar_w * max(0.0, math.sin(math.pi * (h - 6) / 12))
        return int(round(load - solar))

    def advance(self, t):
        """Move the meter to simulated time t; returns the power reported at t."""
        dt = max(0.0, t - self.t)
        if self.rng.random() < 0.05:  # a kettle or oven comes on for a while
            self._burst_w = self.rng.choice((1200, 2000, 3000))
            self._burst_until = t + self.rng.randint(120, 1200)
        p = self._power(t)
        # The interval is booked at the power reported now: increments and power agree exactly.
        if p >= 0:
            self.import_wh += p * dt / 3600.0
        else:
            self.export_wh += -p * dt / 3600.0
        self.t = t
        self.power_w = p
        return p


class MgmSim:
    def __init__(self, version=8, mac="00:0D:6F:00:0B:C4:1A:22", install_code=bytes(8), seed=0,
                 speedup=1.0, latency=0.003, start_hour=5.0, import_wh=None, export_wh=None,
                 multiplier=1, divisor=1000, has_export=True, zcl_seq=None, v2_negative="alternate",
                 v2_constant=b"\xfb\xfb", join_status=0x00, verbose=False, out=None,
                 rx_lines=None, rx_other=0.2, rx_position="before"):
        if version not in (2, 4, 6, 7, 8, "unknown"):
            raise ValueError("version must be 2, 4, 6, 7, 8 or 'unknown'")
        if rx_position not in ("before", "after", "mixed"):
            raise ValueError("rx_position must be before, after or mixed")
        # Received-message lines at loglevel 20: whether v2 modules print them is not known.
        self.rx_lines = version != 2 if rx_lines is None else bool(rx_lines)
        self.rx_other = rx_other  # chance of a line for another cluster per reading
        self.rx_position = rx_position  # the 0x0702 line before or after the `r` answer
        # every received-message line printed: t, cluster, zcl, cut, split, mismatch, frames (how many
        # frames were sent before it: the line belongs with the answer at sent_frames[frames])
        self.rx_sent = []
        self.received = bytearray()  # every byte the host wrote to the module
        self._meter_msg = None  # the meter message behind the last reading (seq, imp, exp, power_raw, fields, glitch)
        self._kr = random.Random(seed ^ 0x5EC)  # the network key only: leaves self.rng's sequence alone
        self.network_key = bytes(self._kr.randrange(256) for _ in range(16))
        if v2_negative not in ("alternate", "ones", "signmag"):
            raise ValueError("v2_negative must be alternate, ones or signmag")
        self.version = version
        self.mac = mac
        self.install_code = bytes(install_code)
        self._mac_payload = P.mac_payload(mac)
        self._ic_payload = P.install_code_payload(self.install_code)
        self.rng = random.Random(seed)
        self.speedup = float(speedup)
        self.latency = latency
        self.multiplier = multiplier
        self.divisor = divisor
        self.has_export = has_export
        self.v2_negative = v2_negative
        self.v2_constant = bytes(v2_constant)
        self.join_status = join_status
        self.verbose = verbose
        self.out = out or (lambda s: print(s, flush=True))
        self.seq = self.rng.randrange(256) if zcl_seq is None else zcl_seq & 0xFF
        self._ms0 = self.rng.randrange(1 << 32)  # the meter's free-running ms clock
        self._neg_toggle = 0
        self._missing_toggle = 0
        self.model = MeterModel(self.rng, start_hour * 3600.0,
                                import_wh if import_wh is not None else 1500000 + self.rng.randrange(100000),
                                export_wh if export_wh is not None else 200000 + self.rng.randrange(10000))
        self._sim_offset = start_hour * 3600.0
        self._t0 = time.monotonic()
        self.loglevel = 10
        self.faults = {}
        self.lock = threading.RLock()
        # Counters and records for tests.
        self.requests = {}  # 'r' -> number received (answered or not)
        self.sent_frames = []  # (cmd char, payload bytes) of every well-formed frame sent
        self.readings = []  # model state behind each reading sent: t, import_wh, export_wh, power_w, seq
        self.drains = 0  # lone CRs received
        self.other_text = []  # text lines other than requests (e.g. loglevel)
        self.dropped_bytes = 0  # bytes lost because nobody read the pty
        self.path = None
        self._master = self._slave = None
        self._thread = None
        self._stop = threading.Event()

    # ---------- lifecycle ----------
    def start(self):
        self._master, self._slave = os.openpty()
        # Raw, VMIN=0/VTIME=0 on the slave: a MicroPython FileIO read then returns what is there.
        tty.setraw(self._slave)
        attr = termios.tcgetattr(self._slave)
        attr[6][termios.VMIN] = 0
        attr[6][termios.VTIME] = 0
        termios.tcsetattr(self._slave, termios.TCSANOW, attr)
        os.set_blocking(self._master, False)
        # We keep our slave fd open so the master never sees EIO while the client closes/reopens.
        self.path = os.ttyname(self._slave)
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="mgm-sim", daemon=True)
        self._thread.start()
        return self.path

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(2)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---------- time ----------
    def now(self):
        """Simulated seconds since the simulated midnight of day 0."""
        return self._sim_offset + (time.monotonic() - self._t0) * self.speedup

    def advance(self, seconds):
        """Jump simulated time forward (tests: a whole afternoon without waiting)."""
        with self.lock:
            self._sim_offset += seconds

    @property
    def joins(self):
        return self.requests.get("j", 0)

    # ---------- faults ----------
    def set_fault(self, name, **params):
        """Turn a fault on. Params: count=N (next N events only), probability=p (0..1), plus
        per-fault ones (garbage: size; log_text: lines; lying_length: delta; bad_terminator: byte;
        errors: code; missing: fields). Energy faults, for the totals (count = readings):
        - wh_glitch: jump=Wh (any size, negative too; default 1000000), on=import|export|both (ZCL;
          v2 has one net counter): the counter reads off by `jump` for these readings only.
        - zeros: the energy counters read 0 (ZCL: import and export; v2: its net counter, where 0
          is also the 'missing' marker), e.g. at boot: set_fault('zeros', count=2) before starting.
        - wh_step: import_wh, export_wh: the meter is reset or replaced: both counters restart
          there and count on from it. Also how a test makes the meter read below a total that was
          published (and retained) before: stop the firmware, wh_step, start it again.
        A long outage is sim.advance(seconds) (the meter counts on meanwhile) or no_readings."""
        if name not in FAULTS:
            raise ValueError("unknown fault %r (known: %s)" % (name, ", ".join(FAULTS)))
        params = dict(params)
        if "count" not in params and name in ONE_SHOT:
            params["count"] = 1
        with self.lock:
            self.faults[name] = params

    def clear_faults(self, name=None):
        with self.lock:
            if name is None:
                self.faults.clear()
            else:
                self.faults.pop(name, None)

    def _take(self, name):
        """Params of fault `name` if it applies to this event (consumes one of its count), else None."""
        with self.lock:
            f = self.faults.get(name)
            if f is None:
                return None
            if self.rng.random() >= f.get("probability", 1.0):
                return None
            if "count" in f:
                f["count"] -= 1
                if f["count"] <= 0:
                    del self.faults[name]
            return f

    def status(self):
        with self.lock:
            return ("MGM v%s on %s  faults: %s  requests: %s  frames sent: %d  sim time: day %d %s  "
                    "import %d Wh export %d Wh power %d W" % (
                        self.version, self.path,
                        ", ".join("%s%s" % (k, v or "") for k, v in self.faults.items()) or "none",
                        self.requests, len(self.sent_frames), int(self.now() // 86400),
                        time.strftime("%H:%M", time.gmtime(self.now() % 86400)),
                        self.model.import_wh, self.model.export_wh, self.model.power_w))

    # ---------- serving ----------
    def _serve(self):
        buf = bytearray()
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._master], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not r:
                continue
            try:
                data = os.read(self._master, 1024)
            except BlockingIOError:
                continue
            except OSError:
                time.sleep(0.05)
                continue
            buf += data
            self.received += data
            # A request is complete at its CR, however it was split across writes.
            while b"\r" in buf:
                i = buf.index(b"\r")
                line = bytes(buf[:i])
                del buf[:i + 1]
                self._line(line)
            if len(buf) > 256:  # junk without CR: keep only the tail, as a small UART buffer would
                del buf[:-16]

    def _line(self, line):
        line = line.lstrip(b"\n")
        if not line:
            self.drains += 1  # lone CR: ends any half-command; nothing to answer
            return
        if line.startswith(b"loglevel"):
            if "ignore_loglevel" in self.faults:
                self.other_text.append(line)
                self._say("<- %r ignored (this module ignores loglevel)" % line)
                return
            try:
                self.loglevel = int(line.split()[1])
            except (IndexError, ValueError):
                pass
            self.other_text.append(line)
            self._say("<- %r (loglevel now %d)" % (line, self.loglevel))
            return
        j = line.rfind(b"$")
        if j < 0 or len(line) - j != 2:
            self.other_text.append(line)
            self._say("<- %r ignored" % line)
            return
        self._request(line[j + 1])

    def _request(self, cmd):
        c = chr(cmd)
        with self.lock:
            self.requests[c] = self.requests.get(c, 0) + 1
        if self.latency:
            time.sleep(self.latency)
        if self._take("silence") is not None:
            self._say("<- $%s  -> (silence)" % c)
            return
        if cmd == CMD_R:
            self._reading()
        elif cmd == CMD_F:
            self._answer(cmd, bytes((self.version if self.version != "unknown" else UNKNOWN_VERSION_BYTE,)))
        elif cmd == CMD_M:
            self._answer(cmd, self._mac_payload)
        elif cmd == CMD_I:
            self._answer(cmd, self._ic_payload, secret=True)
        elif cmd == CMD_J:
            self._answer(cmd, bytes((self.join_status,)))
        else:
            self._say("<- $%s  -> (unknown command, no answer)" % c)

    # ---------- output ----------
    def _write(self, data):
        """Non-blocking: when nobody reads the pty its buffer fills and bytes are lost, as on a UART."""
        if self._master is None:
            return
        try:
            n = os.write(self._master, data)
        except (BlockingIOError, OSError):
            n = 0
        if n < len(data):
            self.dropped_bytes += len(data) - n

    def _log_lines(self):
        f = self._take("log_text")
        n = 0
        if f is not None:
            n = f.get("lines", 3 if self.loglevel >= 20 else 1)
        elif self.loglevel >= 20:
            n = 1  # debug level: the module talks even without the fault
        out = b""
        for _ in range(n):
            fmt = self.rng.choice(LOG_LINES)
            args = tuple(self.rng.randint(1, 99) for _ in range(fmt.count("%")))
            out += (fmt % args).encode() + b"\r\n"
        return out

    def _garbage(self, f):
        return bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, f.get("size", 16))))

    def _answer(self, cmd, payload, secret=False, wire=None, extra_before=b"", tail=True):
        """Send one answer (wire overrides the well-formed frame), with garbage/log text around it."""
        good = wire is None
        wire = P.frame(cmd, payload) if good else wire
        pre, post = self._log_lines() + extra_before, b""
        g = self._take("garbage")
        if g is not None:
            pre = self._garbage(g) + pre
            post = self._garbage(g) if tail else b""
        self._write(pre + wire + post)
        if good:
            with self.lock:
                self.sent_frames.append((chr(cmd), bytes(payload)))
        if self.verbose:
            shown = "(%d bytes, not shown)" % len(payload) if secret else payload.hex()
            self._say("<- $%s  -> %s%s %s" % (chr(cmd), "" if good else "BROKEN ", chr(cmd), shown))

    def _say(self, text):
        if self.verbose:
            self.out(text)

    # ---------- readings ----------
    def _reading(self):
        err = self._take("errors")
        err_frame = b""
        if err is not None:
            code = err.get("code", self.rng.choice((0x01, 0x02, 0x07, 0x0B)))
            err_frame = P.frame(CMD_E, bytes((code,)))
            with self.lock:
                self.sent_frames.append(("e", bytes((code,))))
        if self._take("no_readings") is not None:
            if err_frame:
                self._write(err_frame)
            self._say("<- $r  -> (no reading: pairing lost)%s" % (" + e" if err_frame else ""))
            return
        payload = self._reading_payload()
        wire = None
        t = self._take("truncate")
        if t is not None:
            full = P.frame(CMD_R, payload)
            wire = full[:t.get("keep", self.rng.randint(5, len(full) - 2))]
        else:
            b = self._take("bad_terminator")
            if b is not None:
                wire = P.frame(CMD_R, payload)[:-1] + bytes((b.get("byte", self.rng.choice((0x0A, 0x00, 0xFF))),))
            else:
                lie = self._take("lying_length")
                if lie is not None:
                    delta = lie.get("delta", self.rng.choice((-9, -3, 5, 12)))
                    n = min(255, max(0, len(payload) + delta))
                    if n == len(payload):
                        n = len(payload) - 1
                    wire = b"$\x01" + bytes((CMD_R, n)) + payload + b"\r"
        rx_pre, rx_post = self._rx_text(payload)  # the module's log of the meter message (issue 13)
        # A truncated frame is the last thing on the line until the next request.
        self._answer(CMD_R, payload, wire=wire, extra_before=err_frame + rx_pre, tail=t is None)
        if rx_post:
            self._write(rx_post)
        if wire is None and self._take("duplicate") is not None:
            time.sleep(0.002)
            self._write(P.frame(CMD_R, payload))
            with self.lock:
                self.sent_frames.append(("r", payload))
            self._say("<- (duplicate) r %s" % payload.hex())

    def _raw(self, wh):
        """Wh -> the meter's raw unit (protocol.md: Wh = raw * multiplier * 1000 / divisor)."""
        return int(math.floor(wh * self.divisor / (self.multiplier * 1000.0)))

    def _reading_payload(self):
        with self.lock:
            t = self.now()
            m = self.model
            step = self._take("wh_step")
            if step is not None:  # meter reset/replaced: both counters restart low and stay there
                m.import_wh = float(step.get("import_wh", 100000))
                m.export_wh = float(step.get("export_wh", 0))
            p = m.advance(t)
            dollar = self._take("dollar")
            if dollar is not None:
                # Values that contain 0x24 bytes: power and a counter nudged (counters only go up).
                p = m.power_w = p - ((p - 0x24) & 0xFF) if p >= 0x124 or p < 0 else 0x24
                if p >= 0:
                    m.import_wh += (0x24 - self._raw(m.import_wh)) % 256
                else:
                    m.export_wh += (0x24 - self._raw(m.export_wh)) % 256
                if self.version in (7, 8):
                    self.seq = 0x24  # `18 24 01 ...`: a `$ 01` inside the payload
            imp, exp = self._raw(m.import_wh), self._raw(m.export_wh)
            power_raw = int(round(p * self.divisor / (self.multiplier * 1000.0)))
            glitch = self._take("wh_glitch")
            seq = self.seq
            self.seq = (self.seq + 1) & 0xFF
            self.readings.append({"t": t, "import_wh": m.import_wh, "export_wh": m.export_wh,
                                  "power_w": p, "seq": seq, "glitch": glitch is not None,
                                  "nudged": dollar is not None or step is not None})
            if len(self.readings) > 10000:
                del self.readings[:5000]
            missing = self._take("missing")
            fields = tuple(missing.get("fields", ("energy", "power"))) if missing is not None else ()
            zeros = self._take("zeros")
            self._meter_msg = (seq, imp, exp, power_raw, fields, glitch)  # for _meter_zcl (issue 13)
            if self.version == 2:
                net = imp - exp
                if glitch is not None:
                    jump = glitch.get("jump", 1000000)
                    net = net + jump if 0 < net + jump < 0x00400000 else max(1, net - jump)
                negative = self.v2_negative
                if negative == "alternate" and power_raw < 0:
                    negative = ("ones", "signmag")[self._neg_toggle]
                    self._neg_toggle ^= 1
                elif negative == "alternate":
                    negative = "ones"
                energy = 0 if zeros is not None else net
                if "energy" in fields:
                    energy = (None, 0x00400000)[self._missing_toggle]
                    self._missing_toggle ^= 1
                ms = int(t * 1000 + self._ms0) & 0xFFFFFFFF
                return P.v2_payload(energy_raw=energy,
                                    power_raw=None if "power" in fields else power_raw,
                                    multiplier=self.multiplier, divisor=self.divisor, meter_ms=ms,
                                    negative=negative,
                                    constant=b"$\x01" if dollar is not None else self.v2_constant)
            if glitch is not None:
                jump, on = glitch.get("jump", 1000000), glitch.get("on", "import")
                if on in ("import", "both"):
                    imp = max(0, imp + jump)
                if on in ("export", "both"):
                    exp = max(0, exp + jump)
            if zeros is not None:
                imp = exp = 0
            if self.version in UNKNOWN_LAYOUT:
                return self._unknown_payload(seq, imp, exp, power_raw, t)
            return self._zcl(seq, imp, exp, power_raw, fields)

    def _zcl(self, seq, imp, exp, power_raw, fields):
        """The ZCL payload of a meter message; `fields` names the values the meter left out."""
        return P.zcl_payload(
            seq=seq,
            import_raw=None if "energy" in fields or "import" in fields else imp,
            export_raw=None if not self.has_export or "export" in fields else exp,
            multiplier=None if "multiplier" in fields else self.multiplier,
            divisor=None if "divisor" in fields else self.divisor,
            demand_raw=None if "power" in fields else power_raw)

    def _unknown_payload(self, seq, imp, exp, power_raw, t):
        """A made-up 64-byte layout (neither 152 bytes nor `18 xx 01`): what an undocumented MGM
        version might send. Values sit at fixed big-endian offsets so tools/find_fields.py can find them."""
        p = bytearray(UNKNOWN_LEN)
        p[0], p[1] = 0xA7, 0x04
        p[2:4] = seq.to_bytes(2, "little")
        p[4:10] = (imp & 0xFFFFFFFFFFFF).to_bytes(6, "big")
        p[10:16] = (exp & 0xFFFFFFFFFFFF).to_bytes(6, "big")
        p[16:20] = power_raw.to_bytes(4, "big", signed=True)
        p[20:24] = (int(t * 1000) & 0xFFFFFFFF).to_bytes(4, "big")
        p[24] = self.multiplier & 0xFF
        p[25:27] = (self.divisor & 0xFFFF).to_bytes(2, "big")
        return bytes(p)


    # ---------- the module's own log lines (issue 13) ----------
    def _meter_zcl(self, payload, delta_w=0):
        """The ZCL bytes of the meter message behind the reading just answered, as a verbose
        module prints them: for v7/v8 exactly its `r` payload."""
        if self.version in (7, 8) and not delta_w:
            return bytes(payload)
        seq, imp, exp, power_raw, fields, glitch = self._meter_msg
        if glitch is not None:
            imp += glitch.get("jump", 1000000)
        return self._zcl(seq, imp, exp, power_raw + delta_w, fields)

    def _rx_text(self, payload):
        """The log text around one `r` answer at loglevel 20 -> (before the frame, after it)."""
        k = self._take("key_lines")
        pre = self._key_text() if k is not None else b""
        if self.loglevel < 20 or not self.rx_lines or self._meter_msg is None:
            return pre, b""
        mm = self._take("rx_mismatch")
        zcl = self._meter_zcl(payload, mm.get("delta", 100) if mm is not None else 0)
        ms = int((time.monotonic() - self._t0) * 1000)
        if self.rx_other and self.rng.random() < self.rx_other:
            pre += self._other_rx_line(ms - 40)
        line = rx_line(0x0702, zcl, ts=ms).encode()
        cut = self._take("rx_cut")
        split = self._take("rx_split")
        end = b"\r\n"
        if cut is not None:
            line = line[:cut.get("keep", len(line) // 2)]
            end = b"\r\n" if cut.get("crlf", 1) else b""
        tail = end + got_meter_rsp(zcl).encode() + b"\r\n"
        with self.lock:
            self.rx_sent.append({"t": self.now(), "cluster": 0x0702, "zcl": zcl, "cut": cut is not None,
                                 "split": split is not None, "mismatch": mm is not None,
                                 "frames": len(self.sent_frames)})
        if split is not None:
            at = split.get("at", self.rng.randint(1, len(line) - 1))
            return pre + line[:at], line[at:] + tail
        after = self.rx_position == "after" or (self.rx_position == "mixed" and self.rng.random() < 0.5)
        if after:
            return pre, line + tail
        return pre + line + tail, b""

    def _other_rx_line(self, ms):
        cluster = self.rng.choice(OTHER_CLUSTERS)
        zcl = bytes((self.rng.choice((0x18, 0x19, 0x08)), self.rng.randrange(256), self.rng.randrange(16))) + \
            bytes(self.rng.randrange(256) for _ in range(self.rng.randint(0, 24)))
        with self.lock:
            self.rx_sent.append({"t": self.now(), "cluster": cluster, "zcl": zcl, "cut": False,
                                 "split": False, "mismatch": False, "frames": len(self.sent_frames)})
        return rx_line(cluster, zcl, ts=ms).encode() + b"\r\n"

    def _key_text(self):
        """What a module that prints its secrets unasked would show (redaction tests)."""
        key = " ".join("%02X" % b for b in self.network_key)
        ke = bytes((0x19, self.rng.randrange(256), 0x00)) + self.network_key + self.install_code
        return ("NWK Key: %s\r\nInstall Code: %s CRC 1D2C\r\n%s\r\n" % (
            key, self.install_code.hex().upper(), rx_line(0x0800, ke))).encode()

    def commands_received(self):
        """Everything the host wrote, as commands (each with its CR; an unfinished one last)."""
        data = bytes(self.received)
        out = []
        while data:
            i = data.find(b"\r")
            if i < 0:
                out.append(data)
                break
            out.append(data[:i + 1])
            data = data[i + 1:]
        return out

    def unsafe_commands(self):
        """Commands received that a well-behaved host never sends (e.g. leave, reset, printKeys, $d)."""
        return [c for c in self.commands_received() if c not in SAFE_COMMANDS]

# ---------- CLI ----------
def _parse_fault(spec):
    """'garbage' or 'garbage:count=3,probability=0.5' or words ['garbage', 'count=3']."""
    words = spec.replace(":", " ").replace(",", " ").split() if isinstance(spec, str) else spec
    params = {}
    for w in words[1:]:
        k, _, v = w.partition("=")
        try:
            params[k] = int(v, 0)
        except ValueError:
            try:
                params[k] = float(v)
            except ValueError:
                params[k] = v
    return words[0], params


COMMANDS = "commands: fault NAME [k=v ...] | clear | status | quit"


def command(sim, line):
    """One console command for a running simulator (mgm_sim's and `make sim`'s consoles) -> the
    reply to print; None for quit."""
    words = line.split()
    if not words:
        return ""
    if words[0] == "quit":
        return None
    if words[0] == "clear":
        sim.clear_faults()
        return "faults cleared"
    if words[0] == "status":
        return sim.status()
    if words[0] == "fault" and len(words) > 1:
        try:
            name, params = _parse_fault(words[1:])
            sim.set_fault(name, **params)
            return "fault %s on %s" % (name, params or "")
        except ValueError as e:
            return str(e)
    return "%s  (faults: %s)" % (COMMANDS, ", ".join(FAULTS))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Simulated MGM111 on a pseudo-terminal (see protocol.md).")
    ap.add_argument("--version", default="8", help="MGM firmware version: 2, 4, 6, 7, 8 or unknown "
                    "(4, 6 and unknown answer `r` in a layout no decoder reads)")
    ap.add_argument("--rx-lines", choices=("on", "off"), help="received-message lines at loglevel 20 "
                    "(default: on, except v2)")
    ap.add_argument("--fault", action="append", default=[], metavar="NAME[:k=v,...]",
                    help="fault active from the start: " + ", ".join(FAULTS))
    ap.add_argument("--link", help="also make this symlink to the pty (removed at exit)")
    ap.add_argument("--speedup", type=float, default=1.0, help="simulated meter seconds per real second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mac", default="00:0D:6F:00:0B:C4:1A:22")
    ap.add_argument("--verbose", action="store_true", help="one line per request/answer")
    args = ap.parse_args(argv)
    version = int(args.version) if args.version.isdigit() else args.version
    try:
        sim = MgmSim(version=version, mac=args.mac, seed=args.seed, speedup=args.speedup, verbose=args.verbose,
                     rx_lines=None if args.rx_lines is None else args.rx_lines == "on")
        for spec in args.fault:
            name, params = _parse_fault(spec)
            sim.set_fault(name, **params)
    except ValueError as e:
        ap.error(str(e))
    sim.start()
    if args.link:
        if os.path.islink(args.link):
            os.unlink(args.link)
        os.symlink(sim.path, args.link)
    print(sim.path, flush=True)
    print("MGM111 v%s simulated on %s%s; %s"
          % (args.version, sim.path, " (link %s)" % args.link if args.link else "", COMMANDS),
          file=sys.stderr, flush=True)
    try:
        for line in sys.stdin:
            reply = command(sim, line)
            if reply is None:
                break
            if reply:
                print(reply, flush=True)
        else:
            # stdin closed (e.g. started in the background): keep serving until interrupted.
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        if args.link and os.path.islink(args.link):
            os.unlink(args.link)
    return 0


if __name__ == "__main__":
    sys.exit(main())
