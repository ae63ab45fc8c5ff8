# Plausibility filter between the decoder and MQTT (protocol.md, "Values that must not reach HA").
# Home Assistant reads any decrease of a total_increasing sensor as a meter reset, so a single bad
# sample would corrupt the user's statistics for good: totals move only by small plausible steps,
# and a jump is accepted only once it has persisted (a real meter reset or rollover).
try:
    from micropython import const
except ImportError:
    def const(x):
        return x

MAX_WATTS = const(131072)  # peers' bound
GLITCH_WH = const(2000)  # max plausible step of a cumulative counter between recent readings
CONFIRM = const(3)  # readings a new level must persist before we re-baseline to it
MAX_DOWNTIME_WH = const(200000)  # a restored v2 baseline further than this is not trusted


class Level:
    """Tracks a value that must stay near its accepted level; a jump must persist to be believed.

    step() returns True when `v` is accepted (then .value == v)."""

    def __init__(self, lo_step, hi_step, first=2, confirm=CONFIRM):
        self.lo = lo_step  # how far below the accepted value a new one may be (0: never lower)
        self.hi = hi_step
        self.first = first  # agreeing readings needed for the first level
        self.confirm = confirm  # ... and to move away from an established one
        self.value = None
        self.restored = False  # .value came from storage, not from this meter session
        self.candidate = None
        self.seen = 0
        self.rebaselined = 0

    def _near(self, ref, v):
        return ref - self.lo <= v <= ref + self.hi

    def step(self, v):
        if self.value is not None and not self.restored and self._near(self.value, v):
            self.value = v
            self.candidate = None
            return True
        if self.candidate is not None and self._near(self.candidate, v):
            self.seen += 1
        else:
            self.seen = 1
        self.candidate = v
        need = self.first if self.value is None or self.restored else self.confirm
        if self.restored and self._near(self.value, v):
            need = 1
        if self.seen >= need:
            if self.value is not None and not self.restored:
                self.rebaselined += 1
            self.value = v
            self.restored = False
            self.candidate = None
            return True
        return False

    def restore(self, v):
        self.value = v
        self.restored = True


class Accepted:
    """What survived the filter for one reading; None where nothing may be published."""

    def __init__(self):
        self.clear()

    def clear(self):
        self.watts = None
        self.import_wh = None
        self.export_wh = None
        self.net_wh = None


class ReadingFilter:
    """decoders.Reading -> Accepted. One per meter; keeps counters of what it rejected."""

    def __init__(self):
        # The decoder already bounds the multiplier; here it must not change unless persistently.
        self.mult = Level(0, 0, 1)
        self.div = Level(0, 0, 1)
        self.imp = Level(0, GLITCH_WH)
        self.exp = Level(0, GLITCH_WH)
        self.net = Level(GLITCH_WH, GLITCH_WH)  # v2's net counter legitimately goes down
        # v2 derived totals: ours, so monotonic by construction; restored after a reboot.
        self.consumed = None
        self.returned = None
        self.rejected_watts = 0
        self.rejected_wh = 0
        self.rejected_scale = 0
        self.out = Accepted()

    def restore_v2(self, consumed, returned, net):
        """Baseline from storage (flash file or retained MQTT). Larger totals are the newer ones."""
        if consumed is None or returned is None:
            return
        if self.consumed is None:
            self.consumed, self.returned = consumed, returned
        else:  # both only ever grow: per counter, the larger is the newer
            self.consumed = max(consumed, self.consumed)
            self.returned = max(returned, self.returned)
        if net is not None and (self.net.value is None or self.net.restored):
            self.net.restore(net)

    def apply(self, r):
        out = self.out
        out.clear()
        if r.multiplier is not None and not (self.mult.step(r.multiplier) & self.div.step(r.divisor)):
            self.rejected_scale += 1
            return out  # a changed scale rescales every value: publish nothing until it persists
        if r.watts is not None:
            if -MAX_WATTS <= r.watts <= MAX_WATTS:
                out.watts = r.watts
            else:
                self.rejected_watts += 1
        if r.format == "v2":
            self._v2(r.net_wh, out)
        else:
            out.import_wh = self._total(self.imp, r.import_wh)
            out.export_wh = self._total(self.exp, r.export_wh)
        return out

    def _total(self, level, v):
        if v is None:
            return None
        first = level.value is None
        if level.step(v):
            return v
        if not first:  # waiting for a second reading at boot is not a rejection
            self.rejected_wh += 1
        return None

    def _v2(self, net, out):
        if net is None:
            return
        prev = self.net.value
        was_live = prev is not None and not self.net.restored
        if not self.net.step(net):
            self.rejected_wh += 1
            return
        delta = 0
        if prev is not None:
            delta = net - prev
            # A re-baseline after a persistent jump: we do not know what happened, add nothing.
            if was_live and not -GLITCH_WH <= delta <= GLITCH_WH:
                delta = 0
            elif not -MAX_DOWNTIME_WH <= delta <= MAX_DOWNTIME_WH:
                delta = 0
        if self.consumed is None:
            # First ever start: the meter's net counter is the best baseline for "consumed".
            self.consumed = net if net > 0 else 0
            self.returned = 0
        elif delta > 0:
            self.consumed += delta
        else:
            self.returned -= delta
        out.net_wh = net
        out.import_wh = self.consumed
        out.export_wh = self.returned
