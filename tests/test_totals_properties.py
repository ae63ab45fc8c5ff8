"""Property-based tests (hypothesis, CPython) of the energy totals: arbitrary reading sequences with
injected faults, as Home Assistant would receive them.

The model: a house whose true energy (imported, exported) grows by at most MAX_WATTS times the time
that passed; a meter whose counters show that energy plus a shift that changes only when the meter
is really reset, replaced or rolled over. Readings arrive up to JITTER_MS late. The device is the
real ReadingFilter, used as the app uses it: restore() once the broker's retained values are known,
then what it accepts is published (our record first, then the totals) and retained by the broker.
Faults: zeros, "missing" markers, glitches of any size up and down (single, or repeated fewer than
CONFIRM times in a row), gaps of any length, real meter resets (down to a nearly new meter, or jumps
up), reboots (the broker kept our retained values, or lost them after an orderly shutdown wrote
flash; with or without a value someone else retained on our topic: absurd, far above, a little
above; the restore window ending before or after the first readings; a meter reset while the device
was off).

For every published value of every total_increasing series (ZCL import and export, v2 consumed and
returned), across reboots:
- it never decreases and is never 0;
- it never runs ahead of the true energy by more than the bound: a fault can lift a series no
  further than physics allows since the last accepted reading (min(size, MAX_WATTS x elapsed +
  margin)), a value someone else retained on our topic by at most HOLD_WH;
- once the faults clear, it follows the true meter again (equal increments);
- a real reset that persists is said in words and counted.
Figures: TOTALS_EXAMPLES (default 400) examples per property (a quarter of that for long histories
of 25 to 80 steps; the first property draws 1 to 60).
"""
import json
import os
import sys

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in ("sim", "firmware"):
    if os.path.join(ROOT, _p) not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, _p))

from decoders import Reading  # noqa: E402
from readings import (CONFIRM, HOLD_WH, JITTER_MS, MAX_DOWNTIME_WH, MAX_WATTS,  # noqa: E402
                      ReadingFilter, bound_wh)

EXAMPLES = int(os.environ.get("TOTALS_EXAMPLES", "400"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RES = 2  # the filter's resolution margin at multiplier 1, divisor 1000
HOUR = 3600 * 1000
V2_DRIFT_W = 300  # v2: net power over long gaps and downtimes, so the counter stays in its range
WMS = 3600 * 1000  # W*ms in one Wh


class R(Reading):
    """A decoded reading."""

    def __init__(self, fmt, imp=None, exp=None, net=None):
        self.clear()
        self.format = fmt
        self.watts = None
        self.import_wh = imp
        self.export_wh = exp
        self.net_wh = net
        self.multiplier = 1
        self.divisor = 1000


class World:
    """The house, its meter, the broker's retained messages, flash, the device and what HA saw."""

    def __init__(self, fmt, start_in, start_out, filter_class=ReadingFilter):
        self.fmt = fmt
        self.filter_class = filter_class
        self.t = 0  # true time, ms
        self.e = {"in": start_in * WMS, "out": start_out * WMS}  # true energy, W*ms
        self.shift = {"in": 0, "out": 0, "net": 0}  # meter counter - true energy (changes at resets)
        self.retained = {}
        self.flash = None
        self.saved_at = 0
        self.published = {"in": [], "out": []}  # (value, true energy, allowance) per publication
        self.allow = {"in": 0, "out": 0}  # how far a series may be ahead of the truth
        self.c0 = {}  # series - true energy at the first publication (the series' own start)
        self.last_clean = {}  # per counter: arrival time of its last clean reading
        self.glitched = {}  # per counter: glitched readings since its last clean one
        self.pending = []  # real jumps the filter has not taken yet: (counter, series, size, since)
        self.shift_at_pub = {}  # the meter's shifts when we last published
        self.m_at_pub = {}  # the filter's meter levels then (our record's m_*)
        self.said = []
        self.boot(restore_after=0)

    # --- truth ---
    def true(self, k):
        return self.e[k] // WMS

    def meter(self, k):
        if k == "net":
            return self.true("in") - self.true("out") + self.shift["net"]
        return self.true(k) + self.shift[k]

    def pass_time(self, dt, p_in, p_out):
        if self.fmt == "v2" and dt > 300000:
            # v2's net counter lives in 1 .. 0x3FFFFF Wh: over long times in and out nearly balance,
            # drifting toward the middle of the range.
            drift = V2_DRIFT_W if self.meter("net") < 2000000 else -V2_DRIFT_W
            p_out = max(0, p_in - drift)
            p_in = p_out + drift
        self.t += dt
        self.e["in"] += p_in * dt
        self.e["out"] += p_out * dt

    def keys(self):
        return ("net",) if self.fmt == "v2" else ("in", "out")

    # --- the device ---
    def boot(self, restore_after):
        f = self.filter_class()
        f.say = lambda level, text: self.said.append((level, text))
        if self.flash is not None:
            f.load(dict(self.flash))
        self.f = f
        self.restore_after = restore_after  # readings before the restore window ends
        self.session_readings = 0
        self.last_clean = {}
        self.pending = []
        self.hi = {}
        self.shift_hi = {}
        self.shift_lo = {}
        self.session_published = set()  # counters whose series went on in this session
        if restore_after == 0:
            self.restore()

    def restore(self):
        self.f.restore(dict(self.retained))
        self.publish(self.t, *self.f.totals())  # the app publishes at the end of the restore window

    def read(self, dt, p_in, p_out, jitter, glitch=None, value="meter", clean=True):
        """One reading `dt` ms after the previous one; glitch: (key or "all", offset Wh)."""
        self.pass_time(dt, p_in, p_out)
        arrival = self.t + jitter
        for c in self.keys():  # the shifts this session went through (see publish())
            self.shift_hi[c] = max(self.shift_hi.get(c, self.shift[c]), self.shift[c])
            self.shift_lo[c] = min(self.shift_lo.get(c, self.shift[c]), self.shift[c])
        for k, v in (("in", self.shift["net"] - self.true("out")), ("out", None)) if self.fmt == "v2" \
                else (("in", self.shift["in"]), ("out", self.shift["out"])):
            if v is not None:
                self.hi[k] = max(self.hi.get(k, v), v)
        vals = {}
        for k in self.keys():
            v = self.meter(k)
            hit = glitch is not None and glitch[0] in (k, "all", "net")
            if hit:
                v = max(0, v + glitch[1])
            vals[k] = v if value == "meter" else value
            if clean or (glitch is not None and not hit):
                self.last_clean[k] = arrival
                self.glitched[k] = 0
            elif hit:
                self.glitched[k] = self.glitched.get(k, 0) + 1
        if self.fmt == "v2":
            n = vals["net"]
            r = R("v2", net=n if n is None or 0 < n < 0x400000 else None)  # the decoder's "missing"
        else:
            r = R("zcl", imp=vals["in"], exp=vals["out"])
        a = self.f.apply(r, arrival)
        self.session_readings += 1
        counters = {"in": self.f.imp.c, "out": self.f.exp.c, "net": self.f.net}
        for ev in list(self.pending):
            # A real jump may be taken as energy once enough time has passed for physics to allow
            # it (or it persists and is a reset, not counted): settled when the filter takes it.
            c, k, size, since = ev
            if vals.get(c) and counters[c].value == vals[c]:
                self.allow[k] += min(size, bound_wh(arrival - since, RES))
                self.pending.remove(ev)
        if self.f.restored:
            self.publish(arrival, a.import_wh, a.export_wh, a.net_wh)
        elif self.session_readings >= self.restore_after:
            self.restore()

    def publish(self, now, imp, exp, net):
        """What the app does: our record first when due (energy/state), then the totals, all
        retained."""
        if imp is None and exp is None:
            return
        counters = {"in": self.f.imp.c, "out": self.f.exp.c, "net": self.f.net}
        values = {"in": imp, "out": exp, "net": imp}
        for c in self.keys():
            if values[c] is None:
                continue
            if c not in self.session_published and c in self.shift_at_pub:
                # Across a reboot no clock tells how long we were off: the filter counts the change
                # of the meter since our record (up to MAX_DOWNTIME_WH; ZCL: upward only) as energy
                # used meanwhile, so a meter change while we were off, or before the first level,
                # lifts a series by up to that much.
                # (Any shift the meter went through this session counts: the level may predate the
                # last change.)
                up = max(self.shift_hi[c], self.shift[c]) - self.shift_at_pub[c]
                down = self.shift_at_pub[c] - min(self.shift_lo[c], self.shift[c])
                d = counters[c].value - self.m_at_pub[c]
                counted = abs(d) <= MAX_DOWNTIME_WH if c == "net" else 0 <= d <= MAX_DOWNTIME_WH
                if counted and up > 0:
                    self.allow["in" if c == "net" else c] += up
                if counted and down > 0 and c == "net":
                    self.allow["out"] += down
            self.session_published.add(c)
            self.shift_at_pub[c] = self.shift[c]
            self.m_at_pub[c] = counters[c].value
        rec = self.f.record()
        if rec is not None:
            self.retained["state"] = json.loads(rec)  # as the app reads it back
        for k, v in (("in", imp), ("out", exp)):
            if v is None:
                continue
            self.retained[k] = v
            if k not in self.c0:
                # The series starts from a level the meter showed during this session (it may have
                # been reset since, before the filter could tell): the highest shift seen.
                if self.fmt == "v2":  # first ever start: consumed = the net counter, returned = 0
                    self.c0 = {"in": self.hi["in"], "out": -self.true("out")}
                else:
                    self.c0[k] = self.hi[k]
            self.published[k].append((v, self.true(k), self.allow[k]))
        if net is not None:
            self.retained["net"] = net
        if self.t - self.saved_at >= HOUR // 2:  # state.json every 30 minutes
            self.flash = self.f.snapshot()
            self.saved_at = self.t

    def since(self, k):
        """When the bound for counter k starts: its last accepted (or, before a level, last clean)
        reading before the fault."""
        c = {"in": self.f.imp.c, "out": self.f.exp.c, "net": self.f.net}[k]
        ms = [self.last_clean[k]] if k in self.last_clean else []
        if c.value is not None:
            ms.append(c.ms)
        return min(ms) if ms else None

    def allowance(self, size, since):
        """How far a fault of `size` Wh may lift a series: no further than physics allows."""
        e = 0 if since is None else self.t + JITTER_MS - since
        return min(abs(size), bound_wh(e, RES))


# --- strategies ---
powers = st.integers(0, MAX_WATTS)
dts = st.one_of(st.integers(5000, 300000), st.sampled_from([5000, 30000, 300000]))
gaps = st.integers(300001, 40 * 24 * HOUR)
jitters = st.integers(0, JITTER_MS)
sizes = st.one_of(st.integers(1, 3000), st.integers(1, 10 ** 7), st.integers(1, 10 ** 12))
which = st.sampled_from(["in", "out", "all"])

step = st.one_of(
    st.tuples(st.just("read"), dts, powers, powers, jitters),
    st.tuples(st.just("read"), dts, st.integers(0, 3000), st.integers(0, 3000), jitters),
    st.tuples(st.just("zero"), dts, jitters),
    st.tuples(st.just("missing"), dts, jitters),
    st.tuples(st.just("glitch"), dts, jitters, sizes, st.booleans(), st.integers(1, CONFIRM - 1), which),
    st.tuples(st.just("gap"), gaps, powers, powers, jitters),
    st.tuples(st.just("reset"), dts, which, st.one_of(st.just("low"), st.integers(1, 10 ** 9))),
    st.tuples(st.just("reboot"), st.integers(1000, 7 * 24 * HOUR), powers, powers,
              st.sampled_from(["kept", "kept", "lost"]),
              st.sampled_from([None, None, "absurd", "far", "little"]), st.integers(1, HOLD_WH),
              st.integers(0, CONFIRM + 2), st.booleans()),
)


def _targets(w, which):
    """(counter, series) pairs a fault on counter(s) `which` can lift (v2: one net counter feeds
    both series)."""
    if w.fmt == "v2":
        return (("net", "in"), ("net", "out"))
    return (("in", "in"), ("out", "out")) if which == "all" else ((which, which),)


def _event(text):
    try:
        event(text)
    except Exception:  # outside a hypothesis test (test_the_checks_can_fail)
        pass


def run(w, steps):
    for s in steps:
        kind = s[0]
        _event("step: %s" % (kind if kind != "reboot" else "reboot, broker %s, injected %s" % (s[4], s[5])))
        if kind in ("read", "gap"):
            w.read(s[1], s[2], s[3], s[4])
        elif kind in ("zero", "missing"):
            w.read(s[1], 100, 0, s[2], value=0 if kind == "zero" else None, clean=False)
        elif kind == "glitch":
            _, dt, jit, size, up, n, on = s
            if any(w.glitched.get(c, 0) + n >= CONFIRM for c, _ in _targets(w, on)):
                # Faults persist fewer than CONFIRM readings in a row (more would be a real level).
                w.read(dt, 100, 0, jit)
            w.t += n * dt  # the allowance is known before the readings are published
            for c, k in _targets(w, on):
                w.allow[k] += w.allowance(size, w.since(c))
            w.t -= n * dt
            for _ in range(n):
                w.read(dt, 100, 0, jit, glitch=(on, size if up else -size), clean=False)
        elif kind == "reset":
            _, dt, on, to = s
            w.pass_time(dt, 0, 0)
            for k, _ in _targets(w, on)[:1] if w.fmt == "v2" else _targets(w, on):
                since = w.since(k)
                now = w.meter(k)
                new = 1 + now // 1000 if to == "low" else min(now + to, 99 * 10 ** 9)  # nearly new, or up
                if k == "net":  # v2's counter stays in its range
                    new = min(now - 1, 1000000) if to == "low" else min(new, 3000000)
                w.shift[k] += new - now
                # Within the bound a change cannot be told from energy flowing (v2: either way).
                if k == "net" or new > now:
                    series = k if k != "net" else ("in" if new > now else "out")
                    counter = {"in": w.f.imp.c, "out": w.f.exp.c, "net": w.f.net}[k]
                    if counter.value is not None:  # the filter compares it with its level
                        w.pending.append((k, series, abs(new - now), since or w.t))
                    # else: seen in the first level, or a change since our record (see publish())
        elif kind == "reboot":
            _, down, p_in, p_out, broker, inject, little, restore_after, reset_while_off = s
            if broker == "lost" and w.f.restored:
                # A broker without persistence restarted, after an orderly shutdown wrote state.json
                # (losing both copies of our record is out of scope: nothing is left to continue).
                w.flash = w.f.snapshot()
                w.retained = {}
            w.pass_time(down, p_in, p_out)
            if reset_while_off:
                k = "net" if w.fmt == "v2" else "in"
                now = w.meter(k)
                new = min(now - 1, 1000000) if k == "net" else 1 + now // 1000
                w.shift[k] += new - now
            if inject is not None:
                last = w.retained.get("in")
                if inject == "absurd":
                    w.retained["in"] = 999999999999
                elif last is not None:
                    w.retained["in"] = last + (little if inject == "little" else HOLD_WH * 1000 + little)
                    w.allow["in"] += HOLD_WH  # someone else's value lifts the series at most this much
            w.boot(restore_after)
    return w


def tail(w):
    """The faults clear: clean readings, one long one that outruns any held value, normal ones."""
    if not w.f.restored:
        w.restore()
    for _ in range(CONFIRM + 1):
        w.read(30000, 500, 200, 0)
    need = max(w.allow.values()) + 2 * HOLD_WH + 1000
    w.read(need * WMS // (MAX_WATTS // 2) + 1000, MAX_WATTS // 2, MAX_WATTS // 4, 0)
    for _ in range(CONFIRM + 1):
        w.read(30000, 700, 300, 0)


def check_series(w):
    for k in ("in", "out"):
        values = [v for v, _, _ in w.published[k]]
        assert all(v > 0 for v in values), "%s: zero published: %s" % (k, values)
        assert values == sorted(values), "%s went down: %s" % (k, values)
        for v, true, allow in w.published[k]:
            assert v <= true + w.c0[k] + allow, (
                "%s ran ahead: published %d, true %d + start offset %d + allowance %d"
                % (k, v, true, w.c0[k], allow))


def check_follows(w):
    """After the faults: each published increment is the true one."""
    if w.fmt == "v2":
        steps = (("in", 2000, 0), ("out", 0, 2000), ("in", 1500, 0))
    else:
        steps = (("in", 2000, 1000), ("out", 300, 1500), ("in", 1000, 0))
    if not w.published["out"]:
        w.read(30000, 0, 2000, 0)  # v2 publishes no "returned" until something was returned
    for k, p_in, p_out in steps:
        before = (w.published[k][-1], w.true(k))
        w.read(30000, p_in, p_out, 0)
        after = (w.published[k][-1], w.true(k))
        assert after[0][0] - before[0][0] == after[1] - before[1], (
            "%s does not follow the meter: +%d published, +%d true" % (
                k, after[0][0] - before[0][0], after[1] - before[1]))


# ZCL totals from a new meter to far above 2**30 Wh (the filter keeps them as pairs of small ints).
starts = st.one_of(st.integers(1, 4000000), st.integers(10 ** 9 - 10 ** 6, 9 * 10 ** 10))


@SETTINGS
@given(st.sampled_from(["zcl", "v2"]), starts, st.integers(1, 400000),
       st.lists(step, min_size=1, max_size=60))
def test_published_totals_never_decrease_never_run_ahead_and_recover(fmt, start_in, start_out, steps):
    _event("%s, %s steps" % (fmt, "1-9" if len(steps) < 10 else "10-29" if len(steps) < 30 else "30-80"))
    if fmt == "v2":
        start_in = 2000000 + start_in % 100000 + start_out  # mid-range net counter
    w = World(fmt, start_in, start_out)
    run(w, steps)
    tail(w)
    check_series(w)
    check_follows(w)
    check_series(w)
    for lvl, text in w.said:
        _event("said: " + ("meter reset" if "reset" in text else "ignored a retained value" if "ignored"
                          in text else "holding" if "holding" in text else text[:30]))


@settings(SETTINGS, max_examples=max(1, EXAMPLES // 4))
@given(st.sampled_from(["zcl", "v2"]), starts, st.integers(1, 400000),
       st.lists(step, min_size=25, max_size=80))
def test_long_histories_keep_the_same_promises(fmt, start_in, start_out, steps):
    """The same property over long histories (hypothesis draws mostly short lists above)."""
    test_published_totals_never_decrease_never_run_ahead_and_recover.hypothesis.inner_test(
        fmt, start_in, start_out, steps)


@SETTINGS
@given(st.sampled_from(["zcl", "v2"]), st.integers(1, 4000000),
       st.lists(st.tuples(st.sampled_from(["zero", "missing", "glitch"]),
                          st.integers(-10 ** 12, 10 ** 12).filter(bool)), max_size=CONFIRM - 1),
       jitters, dts)
def test_bad_readings_at_boot_are_never_the_first_level(fmt, start, boot_faults, jit, dt):
    """Zeros, missing markers and glitches at boot, even agreeing ones (fewer than CONFIRM in a
    row): the first published total is the meter's own value, exactly."""
    w = World(fmt, start + 1, 1)
    for kind, g in boot_faults:
        if kind == "glitch":
            w.read(dt, 100, 0, jit, glitch=("all", g), clean=False)
        else:
            w.read(dt, 100, 0, jit, value=0 if kind == "zero" else None, clean=False)
    while not w.published["in"]:
        w.read(dt, 500, 0, jit)
    first = w.published["in"][0][0]
    assert first == w.meter("net" if fmt == "v2" else "in")
    check_series(w)


@SETTINGS
@given(st.sampled_from(["zcl", "v2"]), st.integers(HOLD_WH * 3, 4000000), dts, jitters,
       st.lists(st.tuples(st.sampled_from(["zero", "missing", "read"]), dts), max_size=4),
       st.booleans())
def test_a_real_reset_is_said_in_words_and_the_series_continues(fmt, start, dt, jit, between, reboot):
    """A nearly new meter replaces one that showed more than HOLD_WH (v2: more than the bound until
    the new level has persisted, since the net counter may go down; across a reboot more than
    MAX_DOWNTIME_WH, since no clock spans a reboot): whether it is seen live or across a reboot, the
    reset is said in words, counted, and the published series continues from where it was."""
    if fmt == "v2":  # more than the bound over all the readings below, and within v2's range
        start = min(start + 300000 + (MAX_DOWNTIME_WH if reboot else 0), 3500000)
    w = World(fmt, start, 1)
    for _ in range(CONFIRM + 1):
        w.read(dt, 500, 0, jit)
    last = w.published["in"][-1][0]
    k = "net" if fmt == "v2" else "in"
    w.shift[k] += 1000 - w.meter(k)
    if reboot:
        w.boot(restore_after=0)
    for kind, d in between:
        w.read(d, 200, 0, jit, value=0 if kind == "zero" else (None if kind == "missing" else "meter"),
               clean=kind == "read")
    for _ in range(CONFIRM + 2):
        w.read(dt, 500, 0, jit)
    words = [t for lvl, t in w.said if lvl == "warn" and "reset" in t]
    assert words, w.said
    assert w.f.meter_resets == 1
    check_series(w)
    assert w.published["in"][-1][0] >= last


def test_the_checks_can_fail():
    """A filter that publishes what it is given (the old bug class) fails the checks."""
    class Naive(ReadingFilter):
        def apply(self, r, now):
            a = super().apply(r, now)
            a.import_wh = r.import_wh
            return a
    w = World("zcl", 1000000, 1000, filter_class=Naive)
    run(w, [("read", 30000, 500, 0, 0), ("read", 30000, 500, 0, 0), ("read", 30000, 500, 0, 0),
            ("glitch", 30000, 0, 1500, True, 1, "in"), ("read", 30000, 500, 0, 0)])
    try:
        check_series(w)
    except AssertionError:
        return
    raise AssertionError("a filter that publishes a +1,500 Wh glitch passed the checks")
