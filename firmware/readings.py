# Plausibility filter between the decoder and MQTT (protocol.md, "Values that must not reach HA").
# Home Assistant reads any decrease of a total_increasing sensor as a meter reset and counts the next
# value as new consumption, so one bad sample corrupts the user's statistics for good. Here:
# - a meter counter may move only as far as physics allows since the last accepted reading
#   (MAX_WATTS times the time that passed, plus a margin for timing jitter and counter resolution);
# - a move beyond that is a glitch unless it persists (CONFIRM readings consistent with each other):
#   then the meter really was reset, replaced or rolled over, and it is said so in words;
# - zeros and "missing" markers are never a level, and the first level also needs CONFIRM readings;
# - published totals are ours: they follow the meter's accepted increments and never go down, across
#   glitches, resets and reboots (restore() reads back what we published before).
# Pure apart from the log: runs under CPython and MicroPython; the time comes in with each reading.
try:
    from micropython import const
except ImportError:
    def const(x):
        return x

import log
from decoders import GIGA, Reading

MAX_WATTS = const(131072)  # the largest plausible power (peers' bound), W
JITTER_MS = const(2000)  # arrival time vs the meter's own sampling time
CONFIRM = const(3)  # readings a level must persist: the first one, and any jump
MAX_POLL_S = const(300)  # longest poll interval a user can set
# The furthest a total we published can be ahead of the meter: one accepted step at the longest poll
# interval. A retained value above the meter by no more than this is held as a floor.
HOLD_WH = const(11000)  # >= bound_wh(MAX_POLL_S * 1000, resolution): 10,997 Wh
# Across a reboot no clock tells how long we were off: a counter change up to this much is counted
# as energy used (v2: or returned) meanwhile; beyond it, it is taken as a meter reset or change.
MAX_DOWNTIME_WH = const(200000)
V2_SPAN_WH = const(4194304)  # v2's net counter never exceeds 0x00400000 Wh (protocol.md)
# The largest plausible power running for 87 years: no meter shows this much (live readings at or
# above it are bad values, like zeros; retained ones are ignored). 10**11 Wh = 100 pairs' hi.
TOTAL_HI_MAX = const(100)
MAX_TOTAL_WH = 100000000000  # not const(): not a small int on the ESP32; used when restoring

try:
    from time import ticks_add as _tadd
    from time import ticks_diff as _tdiff

    _HALF = _tadd(0, -1) >> 1  # just under half the ticks period (2**29 - 1 ms on the ESP32)

    def elapsed_ms(now, then):
        d = _tdiff(now, then)
        if d < 0:  # readings come in order: a "negative" gap is one longer than half the period
            d = _tdiff(now, _tadd(then, _HALF)) + _HALF
        return d
except ImportError:  # CPython: plain integers, no wrap
    def elapsed_ms(now, then):
        return now - then if now > then else 0


def bound_wh(ms, res):
    """Most a meter can count in `ms` (plus the jitter margin), plus `res` (counter resolution).
    In whole seconds and hours so every intermediate value stays a small int on the ESP32."""
    s = (ms + JITTER_MS + 999) // 1000
    h = s // 3600
    s -= h * 3600
    return h * MAX_WATTS + (s * MAX_WATTS + 3599) // 3600 + res


# Totals are pairs of small ints, Wh = hi * GIGA + lo with 0 <= lo < GIGA (decoders.Reading): on the
# ESP32 an int of 2**30 or more is a heap object, and ZCL totals above 2**30 Wh are normal. Moves
# between readings are small, so the filter works on differences, which are small ints.
HUGE = const(0x3FFFFFFF)  # a difference too large for any bound


def diff(h1, l1, h0, l0):
    """(h1, l1) - (h0, l0) as a small int, or +-HUGE when it is beyond 7 * 10**7 Wh."""
    d = l1 - l0  # -GIGA < d < GIGA
    dh = h1 - h0
    if dh == 0:
        return d
    if dh == 1:
        return d + GIGA if d < HUGE - GIGA else HUGE
    if dh == -1:
        return d - GIGA if d > GIGA - HUGE else -HUGE
    return HUGE if dh > 0 else -HUGE


def to_int(h, l):
    """A pair as one int (allocates on the ESP32 above 2**30: messages and storage only)."""
    return h * GIGA + l


def fmt_wh(h, l):
    """A pair as decimal text, for MQTT (never via a long int)."""
    if h < 0:  # only a ZCL net (in - out) is ever negative
        if l:
            h, l = -h - 1, GIGA - l
        else:
            h = -h
        return ("-%d%09d" % (h, l)) if h else ("-%d" % l)
    return ("%d%09d" % (h, l)) if h else ("%d" % l)


# A pair as three arguments of "%s%0*d" (fmt_wh's text, made inside one % with the rest of a
# record): no string of its own per value, only the record's, on a path taken every reading.
_WH = "%s%0*d"
_V2_RECORD = '{"fmt": "v2", "in": %s, "out": %s, "m_net": %s}' % (_WH, _WH, _WH)
_ZCL_IN_RECORD = '{"fmt": "zcl", "in": %s, "m_in": %s, "o_in": %s}' % (_WH, _WH, _WH)
_ZCL_RECORD = _ZCL_IN_RECORD[:-1] + ', "out": %s, "m_out": %s, "o_out": %s}' % (_WH, _WH, _WH)


def _wh_args(h, l, a, k):
    if h < 0:  # as fmt_wh; the prefix is made only for a value below -10**9 Wh
        if l:
            h, l = -h - 1, GIGA - l
        else:
            h = -h
        a[k] = ("-%d" % h) if h else "-"
    else:
        a[k] = h if h else ""
    a[k + 1] = 9 if h else 0
    a[k + 2] = l


# Counter.step() results
NONE = const(0)  # no value in this reading
BAD = const(1)  # zero or negative: never a level
WAIT = const(2)  # no level yet; candidate noted
GLITCH = const(3)  # beyond the bound of the accepted level; candidate noted
OK = const(4)  # accepted; .delta is the move
FIRST = const(5)  # first level, after CONFIRM consistent readings
JUMP = const(6)  # a jump persisted: new level, .prev_* the old one


class Counter:
    """One meter counter (Wh as decoded, a pair): its accepted level and what it may do next.

    two_way: v2's net counter goes down as well as up. Otherwise the counter only grows; a small
    decrease (up to the last accepted upward step, at most HOLD_WH) is accepted at once, since that
    step may have been a glitch within the bound: totals then hold until the meter passes them."""

    def __init__(self, two_way=False):
        self.two_way = two_way
        self.hi = 0  # accepted level; lo None: none yet
        self.lo = None
        self.ms = 0  # arrival time of the level
        self.up = 0  # the last accepted upward step
        self.delta = 0
        self.prev_hi = 0
        self.prev_lo = None
        self.prev_ms = 0
        self.cand_hi = 0  # a value beyond the bound, waiting to persist
        self.cand_lo = None
        self.cand_ms = 0
        self.seen = 0

    @property
    def value(self):  # tests and messages
        return None if self.lo is None else to_int(self.hi, self.lo)

    def _within(self, d, ref_ms, now, res, ts, down):
        e = elapsed_ms(now, ref_ms)
        if ts != 1:
            e *= ts
        b = bound_wh(e, res)
        return -(b if self.two_way else down) <= d <= b

    def step(self, h, l, now, res, ts=1):
        if l is None:
            return NONE  # "missing": no information either way, candidates stay as they are
        if h < 0 or (h == 0 and l == 0) or h >= TOTAL_HI_MAX:
            return BAD
        if self.lo is not None:
            d = diff(h, l, self.hi, self.lo)
            up = self.up if self.up < HOLD_WH else HOLD_WH
            if self._within(d, self.ms, now, res, ts, up + res):
                self.delta = d
                self.up = d if d > 0 else 0
                self.hi = h
                self.lo = l
                self.ms = now
                self.cand_lo = None
                self.seen = 0
                return OK
        if self.cand_lo is not None and self._within(diff(h, l, self.cand_hi, self.cand_lo),
                                                     self.cand_ms, now, res, ts, res):
            self.seen += 1
        else:
            self.seen = 1
        self.cand_hi = h
        self.cand_lo = l
        self.cand_ms = now
        first = self.lo is None
        if self.seen < CONFIRM:
            return WAIT if first else GLITCH
        self.prev_hi = self.hi
        self.prev_lo = self.lo
        self.prev_ms = self.ms
        self.hi = h
        self.lo = l
        self.ms = now
        self.up = 0
        self.delta = 0
        self.cand_lo = None
        self.seen = 0
        return FIRST if first else JUMP


def _age(snap):
    """Our published totals only grow: the record with the larger sum is the newer one (on a tie
    the later source, the broker's, wins)."""
    a = 0
    for k in ("in", "out"):
        v = snap.get(k)
        if type(v) is int:
            a += v
    return a


_P = [0, 0]  # result of _add/_sub: a pair, without a tuple per call


def _add(h1, l1, h2, l2):
    t = l1 - GIGA + l2  # never above 2**30, unlike l1 + l2
    if t >= 0:
        _P[0] = h1 + h2 + 1
        _P[1] = t
    else:
        _P[0] = h1 + h2
        _P[1] = t + GIGA


def _sub(h1, l1, h2, l2):
    t = l1 - l2
    if t < 0:
        _P[0] = h1 - h2 - 1
        _P[1] = t + GIGA
    else:
        _P[0] = h1 - h2
        _P[1] = t


def _add_small(h, l, d):
    """(h, l) + d for a small d (a move between readings)."""
    if d >= 0:
        _add(h, l, 0, d)
    else:
        _add(h, l, -1, d + GIGA)


def _split(v):
    h, l = divmod(v, GIGA)
    return h, l


class Total:
    """A published total_increasing value fed by one monotonic meter counter (ZCL import/export).

    Published = max(published, meter + offset). The offset is 0 until the meter is reset or replaced
    (then the published value continues where it was) or after a reboot that restored one."""

    def __init__(self, name, key):
        self.name = name  # in words, for messages
        self.key = key  # "in" / "out": retained topic and snapshot keys
        self.c = Counter()
        self.ph = 0  # published, a pair; pl None until restored and a level exists
        self.pl = None
        self.oh = 0  # offset, a pair
        self.ol = 0

    @property
    def pub(self):
        return None if self.pl is None else to_int(self.ph, self.pl)

    @property
    def off(self):
        return to_int(self.oh, self.ol)

    def set(self, pub, off):
        self.ph, self.pl = _split(pub)
        self.oh, self.ol = _split(off)


class Accepted(Reading):
    """What may be published after one reading; None where nothing may be (imp_lo, exp_lo, net_lo
    None), as pairs like decoders.Reading."""


def _json(d):
    import json
    return json.dumps(d)


def _restore():
    import readings_restore
    return readings_restore


def _drop():
    # Rarely needed (once per boot and counter): give its code back to the heap, as app.py does
    # with discovery.py.
    import sys
    sys.modules.pop("readings_restore", None)


def _say(level, text):
    if level == "warn":
        log.warn(text)
    else:
        log.info(text)


class ReadingFilter:
    """decoders.Reading + arrival time (ms) -> Accepted. One per meter.

    Nothing is published until restore() has been called (after the app read our retained values
    back, or decided there are none): a first total published before that could be below what Home
    Assistant last saw."""

    def __init__(self):
        self.time_scale = 1  # tests compress time (config debug.time_scale): elapsed ms x this
        self.say = _say  # (level, text): words for the log and the "last error" diagnostic
        self.mult = None
        self.div = None
        self.res = 2  # counter resolution in Wh (+1 for truncation in decoders.scale)
        self._scale_cand = None
        self._scale_seen = 0
        self.imp = Total("energy consumed", "in")
        self.exp = Total("energy returned", "out")
        self.net = Counter(True)  # v2's net counter
        # v2 derived totals, pairs: ours, monotonic by construction. cl None: not started.
        self.ch = 0
        self.cl = None
        self.rh = 0
        self.rl = 0
        self.restored = False
        self._snaps = []  # our own records: flash state.json, then the retained energy/state
        self._floors = {}  # plain retained totals (energy/in, energy/out, energy/net)
        self.rejected_watts = 0
        self.rejected_wh = 0
        self.rejected_scale = 0
        self.meter_resets = 0
        self.out = Accepted()
        self._a9 = [0] * 9  # record(): the values' "%s%0*d" arguments, reused (3 or 6 values)
        self._a18 = [0] * 18
        self._text = [None, None, None]  # text(): reused

    @property
    def consumed(self):
        return None if self.cl is None else to_int(self.ch, self.cl)

    @property
    def returned(self):
        return None if self.cl is None else to_int(self.rh, self.rl)

    def _set_v2(self, consumed, returned):
        self.ch, self.cl = _split(consumed)
        self.rh, self.rl = _split(returned)

    # --- what survived a reboot ---
    def load(self, snap):
        """Our own record from flash (state.json), read at boot; used when restore() runs."""
        if isinstance(snap, dict):
            self._snaps.insert(0, snap)

    def restore(self, retained):
        """Called once, when the app knows what the broker kept for us: {"in": int, "out": int,
        "net": int, "state": dict} (any may be missing). From now on totals are published."""
        _restore().restore(self, retained)
        _drop()

    def snapshot(self):
        """Our record of the published series, to persist (flash and retained energy/state)."""
        # Until a counter has started from it, the record we loaded is still the one to keep.
        pending = None
        for s in self._snaps:
            if pending is None or _age(s) >= _age(pending):
                pending = s
        if not self.restored:
            return pending
        if self.cl is not None:
            return {"fmt": "v2", "in": self.consumed, "out": self.returned, "m_net": self.net.value}
        i, e = self.imp, self.exp
        if i.pl is None and e.pl is None:
            return pending
        s = {"fmt": "zcl"}
        for t in (i, e):
            # Published value, the meter's reading and our offset (published = meter + offset,
            # unless the value is held above that until the meter passes it).
            src = None
            if t.pl is not None:
                src = (t.pub, t.c.value, t.off)
            elif pending is not None and pending.get("fmt") == "zcl" and t.key in pending:
                src = (pending[t.key], pending.get("m_" + t.key), pending.get("o_" + t.key))
            if src is not None:
                s[t.key], s["m_" + t.key], s["o_" + t.key] = src
        return s

    def record(self):
        """snapshot() as the JSON text retained on energy/state with every publication, built from
        the pairs (json.dumps(snapshot()) would make a long int of every total above 2**30 on the
        ESP32). None when there is nothing to record."""
        if not self.restored:
            return None
        if self.cl is not None:
            a = self._a9
            c = self.net
            _wh_args(self.ch, self.cl, a, 0)
            _wh_args(self.rh, self.rl, a, 3)
            _wh_args(c.hi, c.lo, a, 6)
            return _V2_RECORD % tuple(a)
        i, e = self.imp, self.exp
        if i.pl is None or e.pl is None:
            # A counter not started yet: keep the loaded record's part of it (snapshot()).
            slow = i.pl is None
            for s in self._snaps:
                if s.get("fmt") != "zcl" or (e.pl is None and "out" in s):
                    slow = True
            if slow:
                s = self.snapshot()
                return None if s is None else _json(s)
        a = self._a9 if e.pl is None else self._a18
        _wh_args(i.ph, i.pl, a, 0)
        _wh_args(i.c.hi, i.c.lo, a, 3)
        _wh_args(i.oh, i.ol, a, 6)
        if e.pl is None:
            return _ZCL_IN_RECORD % tuple(a)
        _wh_args(e.ph, e.pl, a, 9)
        _wh_args(e.c.hi, e.c.lo, a, 12)
        _wh_args(e.oh, e.ol, a, 15)
        return _ZCL_RECORD % tuple(a)

    def totals(self):
        """What to publish now, as ints: (consumed, returned, net); None where there is nothing."""
        if not self.restored:
            return None, None, None
        if self.cl is not None:
            return self.consumed, self.returned or None, self.net.value
        return self.imp.pub, self.exp.pub, None

    def text(self):
        """What to publish now, as text for MQTT: (consumed, returned, net); None where there is
        nothing. ZCL's net is consumed - returned. Built from the pairs, never a long int."""
        t = self._text  # a list reused, not a tuple per reading: unpacked at once by the caller
        t[0] = t[1] = t[2] = None
        if not self.restored:
            return t
        if self.cl is not None:
            c = self.net
            t[0] = fmt_wh(self.ch, self.cl)
            if self.rh or self.rl:
                t[1] = fmt_wh(self.rh, self.rl)
            t[2] = fmt_wh(c.hi, c.lo)
            return t
        i, e = self.imp, self.exp
        if i.pl is not None:
            t[0] = fmt_wh(i.ph, i.pl)
        if e.pl is not None:
            t[1] = fmt_wh(e.ph, e.pl)
            if i.pl is not None:
                _sub(i.ph, i.pl, e.ph, e.pl)
                t[2] = fmt_wh(_P[0], _P[1])
        return t

    # --- readings ---
    def apply(self, r, now):
        out = self.out
        out.clear()
        if r.multiplier is not None and not self._scale(r.multiplier, r.divisor):
            self.rejected_scale += 1
            return out  # a changed scale rescales every value: publish nothing until it persists
        if r.watts is not None:
            if -MAX_WATTS <= r.watts <= MAX_WATTS:
                out.watts = r.watts
            else:
                self.rejected_watts += 1
        if r.format == "v2":
            self._v2(r.net_hi, r.net_lo, now, out)
        else:
            t = self.imp
            if self._total(t, r.imp_hi, r.imp_lo, now):
                out.imp_hi = t.ph
                out.imp_lo = t.pl
            t = self.exp
            if self._total(t, r.exp_hi, r.exp_lo, now):
                out.exp_hi = t.ph
                out.exp_lo = t.pl
        return out

    def _scale(self, mult, div):
        if self.mult is None or (mult == self.mult and div == self.div):
            self.mult = mult
            self.div = div
            self.res = mult * 1000 // div + 1 if div else 2
            self._scale_cand = None
            return True
        c = self._scale_cand
        if c is not None and c[0] == mult and c[1] == div:
            self._scale_seen += 1
        else:
            self._scale_cand = (mult, div)
            self._scale_seen = 1
        if self._scale_seen >= CONFIRM:
            self.say("warn", "the meter's scale changed from multiplier %d, divisor %d to multiplier "
                     "%d, divisor %d" % (self.mult, self.div, mult, div))
            self.mult = None
            return self._scale(mult, div)
        return False

    def _result(self, res):
        if res == BAD or res == GLITCH:
            self.rejected_wh += 1
        return res >= OK

    def _jump(self, c, name, then):
        """A persisted jump, in words for the user (it feeds the "last error" diagnostic)."""
        self.meter_resets += 1
        e = elapsed_ms(c.ms, c.prev_ms) * self.time_scale // 1000
        prev = to_int(c.prev_hi, c.prev_lo)
        self.say("warn", "%s: the meter's counter went from %d to %d Wh (%+d Wh in %d s, more than a "
                 "meter can count) and stayed there for %d readings: taken as a meter reset, "
                 "replacement or rollover; %s" % (name, prev, c.value, c.value - prev, e, CONFIRM,
                                                  then))

    def _total(self, t, h, l, now):
        """One counter's reading; True when t's published value (t.ph, t.pl) is to go out."""
        c = t.c
        res = c.step(h, l, now, self.res, self.time_scale)
        if not self._result(res) or not self.restored:
            if res == JUMP:
                self._jump(c, t.name, "nothing published yet")
            return False
        if res == FIRST or t.pl is None:
            self._start(t, c.value)
        elif res == JUMP:
            d = diff(c.hi, c.lo, c.prev_hi, c.prev_lo)
            if -HOLD_WH <= d < 0:
                # A little below what we took (that may have been a glitch within the bound): hold.
                self.say("info", "%s: the meter reads %d Wh below the level we took; holding %s Wh "
                         "until it passes" % (t.name, -d, fmt_wh(t.ph, t.pl)))
            else:
                _sub(t.ph, t.pl, c.hi, c.lo)  # the published value continues where it was
                t.oh = _P[0]
                t.ol = _P[1]
                self._jump(c, t.name, "the jump is not counted and the published total continues "
                           "from %s Wh" % fmt_wh(t.ph, t.pl))
        else:
            _add(c.hi, c.lo, t.oh, t.ol)
            if _P[0] > t.ph or (_P[0] == t.ph and _P[1] > t.pl):
                t.ph = _P[0]
                t.pl = _P[1]
        return True

    def _start(self, t, level):
        """First level of a counter after restore(): continue our own series (readings_restore)."""
        _restore().start(self, t, level)
        _drop()

    # --- v2: one net counter, split into consumed and returned by us ---
    def _v2(self, h, l, now, out):
        c = self.net
        res = c.step(h, l, now, self.res, self.time_scale)
        if not self._result(res) or not self.restored:
            if res == JUMP:
                self._jump(c, "net energy counter", "nothing published yet")
            return
        if res == FIRST or self.cl is None:
            self._start_v2(c.value)
        elif res == OK:
            d = c.delta
            if d > 0:
                _add_small(self.ch, self.cl, d)
                self.ch = _P[0]
                self.cl = _P[1]
            elif d < 0:
                _add_small(self.rh, self.rl, -d)
                self.rh = _P[0]
                self.rl = _P[1]
        else:  # we do not know what happened in between, so nothing is added
            self._jump(c, "net energy counter", "the jump is not counted in energy consumed or "
                       "returned")
        out.net_hi = c.hi
        out.net_lo = c.lo
        out.imp_hi = self.ch
        out.imp_lo = self.cl
        if self.rh or self.rl:  # never a zero total: nothing returned yet
            out.exp_hi = self.rh
            out.exp_lo = self.rl

    def _start_v2(self, level):
        _restore().start_v2(self, level)
        _drop()
