# What survived a reboot, for readings.ReadingFilter: our own record (retained energy/state and
# state.json), the plain retained totals, and where each published series goes on from. Used once
# per boot and per counter, then dropped from memory (readings._drop): its checks and messages
# would otherwise hold heap for the device's whole life. Rules: docs/architecture.md, "Our record
# survives reboots".
from readings import HOLD_WH, MAX_DOWNTIME_WH, MAX_TOTAL_WH, V2_SPAN_WH, _age


def plausible(v):
    # Values from storage or the broker: whole numbers a meter could show (bool is not one).
    return type(v) is int and 0 < v < MAX_TOTAL_WH


def restore(f, retained):
    r = retained or {}
    if isinstance(r.get("state"), dict):
        f._snaps.append(r["state"])
    for k in ("in", "out", "net"):
        v = r.get(k)
        if v is None:
            continue
        if plausible(v):
            f._floors[k] = v
        elif k != "net":  # ZCL's net (in - out) may be zero or negative
            f.say("warn", "ignored the retained value %r on energy/%s: not a total any meter can "
                  "show (0 < Wh < %d)" % (v, k, MAX_TOTAL_WH))
    f.restored = True
    for t in (f.imp, f.exp):
        if t.c.lo is not None:
            start(f, t, t.c.value)
    if f.net.lo is not None:
        start_v2(f, f.net.value)


def _record(f, fmt, keys):
    """Our newest record for this meter format with plausible values."""
    best = None
    for s in f._snaps:
        if s.get("fmt") != fmt:
            continue
        ok = True
        for k in keys:
            v = s.get(k)
            if v is None:
                ok = None  # a record without this counter (it had not started): nothing to say
                break
            if not (plausible(v) or (k == "out" and v == 0)):
                ok = False
        if ok is None:
            continue
        if not ok:
            f.say("warn", "ignored a saved energy record %r: its values are not totals a meter can "
                  "show" % (s,))
            continue
        if best is None or _age(s) >= _age(best):
            best = s
    return best


def start(f, t, level):
    """The first level of a ZCL counter after restore(): continue our own series if we have one."""
    s = _record(f, "zcl", (t.key, "m_" + t.key))
    if s is not None and type(s.get("o_" + t.key)) is not int:
        s = None
    if s is not None:
        p, m, o = s[t.key], s["m_" + t.key], s["o_" + t.key]
        if m <= level <= m + MAX_DOWNTIME_WH:
            off = o  # what the meter counted meanwhile is counted ...
            pub = max(p, level + o)  # ... from where we were (a held value stays held)
        else:
            off = p - level
            pub = p
            f.meter_resets += 1
            f.say("warn", "%s: the meter reads %d Wh, %s the %d Wh it read when we last published: "
                  "taken as a meter reset or replacement while we were not reading it; the "
                  "published total continues from %d Wh" % (
                      t.name, level, "below" if level < m else "far above", m, p))
    else:
        off = 0
        pub = level
    fl = f._floors.get(t.key)
    if fl is not None and fl > pub:
        if fl - pub <= HOLD_WH:
            f.say("info", "%s: the broker keeps %d Wh, %d Wh above our total from the meter: holding "
                  "it until the meter passes it" % (t.name, fl, fl - pub))
            pub = fl
        else:
            f.say("warn", "%s: ignored the retained %d Wh on energy/%s: %d Wh above what the meter "
                  "reads and not in our own record (another publisher?); publishing the meter's "
                  "%d Wh" % (t.name, fl, t.key, fl - pub, pub))
    t.set(pub, off)


def start_v2(f, level):
    """The first level of v2's net counter after restore(): consumed and returned go on."""
    s = _record(f, "v2", ("in", "out", "m_net"))
    fl = f._floors
    if s is None and "in" in fl:
        # Totals retained by an earlier firmware, without our record: believable only if they fit
        # the meter's counter (consumed - returned stays near the net counter).
        c, r = fl["in"], fl.get("out", 0)
        if c - r - level <= V2_SPAN_WH:
            s = {"in": c, "out": r, "m_net": fl.get("net", level)}
        else:
            f.say("warn", "ignored the retained energy totals (consumed %d Wh, returned %d Wh): they "
                  "do not fit the meter's net counter (%d Wh)" % (c, r, level))
        fl = {}
    if s is None:
        f._set_v2(level, 0)  # first ever start: the meter's counter is the best baseline
        return
    consumed, returned = s["in"], s["out"]
    d = level - s["m_net"]
    if -MAX_DOWNTIME_WH <= d <= MAX_DOWNTIME_WH:
        if d > 0:
            consumed += d  # used while we were not reading
        else:
            returned -= d
    else:
        f.meter_resets += 1
        f.say("warn", "net energy counter: the meter reads %d Wh, %+d Wh from the %d Wh it read when "
              "we last published: taken as a meter reset or replacement while we were not reading "
              "it; the totals continue without it" % (level, d, s["m_net"]))
    for k in ("in", "out"):
        v = fl.get(k)
        have = consumed if k == "in" else returned
        if v is None or v <= have:
            continue
        if v - have <= HOLD_WH:
            if k == "in":
                consumed = v
            else:
                returned = v
        else:
            f.say("warn", "ignored the retained %d Wh on energy/%s: %d Wh above our own record "
                  "(another publisher?)" % (v, k, v - have))
    f._set_v2(consumed, returned)
