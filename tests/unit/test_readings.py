# The plausibility filter: what may reach Home Assistant. Runs under CPython and MicroPython
# (tests/unit_runner.py): no pytest features, time is driven explicitly (ms, as ticks_ms gives it).
import readings
from decoders import Reading
from readings import CONFIRM, HOLD_WH, MAX_WATTS, ReadingFilter, bound_wh

S = 1000  # ms
POLL = 30 * S


class R(Reading):
    def __init__(self, fmt="zcl", watts=None, imp=None, exp=None, net=None, mult=1, div=1000):
        self.clear()
        self.format = fmt
        self.watts = watts
        self.import_wh = imp
        self.export_wh = exp
        self.net_wh = net
        self.multiplier = mult
        self.divisor = div


def new(retained=None, flash=None):
    """A filter as the app has it after the restore window: what it said goes to .said."""
    f = ReadingFilter()
    f.said = []
    f.say = lambda level, text: f.said.append((level, text))
    if flash is not None:
        f.load(flash)
    if retained is not False:
        f.restore(retained or {})
    return f


class Clock:
    def __init__(self, t=1000):
        self.t = t


def feed(f, readings, clock=None, dt=POLL):
    """-> list of (watts, import, export, net) as published, one reading every dt ms."""
    clock = clock or Clock()
    out = []
    for r in readings:
        clock.t += dt
        a = f.apply(r, clock.t)
        out.append((a.watts, a.import_wh, a.export_wh, a.net_wh))
    return out


def imports(f, values, clock=None, dt=POLL):
    return [g[1] for g in feed(f, [R(imp=v) for v in values], clock, dt)]


def warnings(f):
    return [t for lvl, t in f.said if lvl == "warn"]


def assert_never_decreases(published):
    vals = [v for v in published if v is not None]
    assert vals == sorted(vals), "a total_increasing value went down: %s" % vals
    assert 0 not in vals, "a zero total was published: %s" % vals


def test_power_within_bounds_passes_and_out_of_range_is_dropped():
    f = new()
    got = feed(f, [R(watts=-250), R(watts=MAX_WATTS + 1), R(watts=-MAX_WATTS - 1), R(watts=131072)])
    assert [g[0] for g in got] == [-250, None, None, 131072]
    assert f.rejected_watts == 2


def test_bound_grows_with_the_time_since_the_last_accepted_reading():
    # 131 kW for 30 s is about 1.1 kWh (protocol.md); for 3 hours far more.
    assert 1092 < bound_wh(30 * S, 0) < 1300
    assert bound_wh(3 * 3600 * S, 0) > 393000
    assert bound_wh(0, 2) > 2  # jitter margin and counter resolution even at no elapsed time
    assert HOLD_WH >= bound_wh(readings.MAX_POLL_S * S, 2)
    # Small ints all the way (ESP32): no intermediate above 2**30 for gaps up to the ticks period.
    assert bound_wh((1 << 30) - 1, 2) < (1 << 30)


def test_elapsed_time_survives_the_ticks_wrap():
    if not hasattr(readings, "_HALF"):
        return  # readings was loaded where time has no ticks (CPython): plain integers, nothing wraps
    from time import ticks_add
    t0 = ticks_add(0, -5000)
    assert readings.elapsed_ms(ticks_add(t0, 12000), t0) == 12000
    # A gap longer than half the period still comes out right (readings arrive in order).
    half = readings._HALF
    assert readings.elapsed_ms(ticks_add(ticks_add(t0, half), 7), t0) == half + 7
    assert readings.elapsed_ms(ticks_add(ticks_add(t0, half), half), t0) == 2 * half


def test_nothing_is_published_before_the_restore():
    f = new(retained=False)
    c = Clock()
    assert imports(f, [1000000, 1000010, 1000020, 1000030], c) == [None] * 4
    f.restore({})
    assert imports(f, [1000040], c) == [1000040]


def test_first_total_needs_confirm_consistent_readings():
    f = new()
    got = imports(f, [1000000, 1000010, 1000020, 1000030])
    assert got == [None] * (CONFIRM - 1) + [1000020, 1000030][:5 - CONFIRM]


def test_agreeing_zeros_at_boot_are_never_a_level():
    # The seen failure: import 0 twice accepted as the first level, then the real total.
    f = new()
    got = imports(f, [0, 0, 0, 0, 1500000, 1500001, 1500002, 1500003])
    assert_never_decreases(got)
    assert got[-1] == 1500003 and [v for v in got if v is not None][0] == 1500002
    assert f.rejected_wh == 4


def test_two_agreeing_bad_readings_at_boot_are_not_a_level():
    f = new()
    got = imports(f, [42, 42, 1500000, 1500001, 1500002, 1500003])
    assert_never_decreases(got)
    assert [v for v in got if v is not None] == [1500002, 1500003]


def test_missing_markers_never_publish_and_do_not_break_a_pending_level():
    f = new()
    got = imports(f, [1000, None, 1001, None, 1002, None, 1003])
    assert [v for v in got if v is not None] == [1002, 1003]
    assert got[1] is None and got[3] is None


def test_small_glitch_within_the_old_2000_wh_step_is_rejected_at_a_30_s_poll():
    # The seen failure: +1,500 Wh in one sample was published, then the true value (a decrease).
    f = new()
    got = imports(f, [100000, 100010, 100020, 101530, 100030, 100040])
    assert got[3] is None
    assert_never_decreases(got)
    assert got[-1] == 100040
    assert f.rejected_wh == 1


def test_a_glitch_of_any_size_up_or_down_never_reaches_a_total():
    for jump in (1200, 5000, 900000, -1, -500, -99999):
        f = new()
        got = imports(f, [100000, 100010, 100020, 100030 + jump, 100040, 100050])
        assert_never_decreases(got)
        # Rejected, or (a tiny dip within the last step) published at no more than the truth.
        assert got[3] is None or got[3] <= 100030, jump
        assert got[-2:] == [100040, 100050]


def test_glitch_within_the_bound_is_held_never_taken_back():
    # At a 5-minute poll +1,500 Wh is physically possible, so it is published; the true values that
    # follow are lower: the total holds until the meter passes it, never goes down.
    f = new()
    got = imports(f, [100000, 100010, 100020, 101520, 100030, 100040, 101600, 101700], dt=300 * S)
    assert got[3] == 101520
    assert got[4:6] == [101520, 101520]
    assert got[6:] == [101600, 101700]
    assert_never_decreases(got)


def test_legitimate_jump_after_an_outage_is_accepted_at_once():
    # No readings for 3 hours, 20 kW used meanwhile: 60 kWh, far beyond the old fixed 2000 Wh step.
    f = new()
    c = Clock()
    imports(f, [100000, 100010, 100020], c)
    c.t += 3 * 3600 * S
    assert imports(f, [160020, 160030], c) == [160020, 160030]
    assert f.rejected_wh == 0 and f.meter_resets == 0


def test_real_meter_reset_persists_is_said_in_words_and_the_total_continues():
    f = new()
    got = imports(f, [5000000, 5000010, 5000020, 5000030, 12, 14, 16, 20, 30])
    assert_never_decreases(got)
    # Rejected until it persisted (CONFIRM readings), then the series continues from 5,000,030.
    assert got[4:4 + CONFIRM - 1] == [None] * (CONFIRM - 1)
    assert got[4 + CONFIRM - 1:] == [5000030, 5000034, 5000044][:len(got) - 3 - CONFIRM]
    assert f.meter_resets == 1
    w = warnings(f)
    assert len(w) == 1 and "energy consumed" in w[0] and "meter reset, replacement or rollover" in w[0]
    assert "continues from 5000030 Wh" in w[0]


def test_an_impossible_jump_up_that_persists_is_not_counted():
    f = new()
    got = imports(f, [1000, 1001, 1002, 1003, 9000000, 9000001, 9000002, 9000003])
    assert_never_decreases(got)
    assert got[-2:] == [1003, 1004]
    assert f.meter_resets == 1


def test_repeated_glitches_shorter_than_confirm_never_reach_a_total():
    f = new()
    seq = [1000, 1001, 1002]
    for k in range(5):
        seq += [7000000] * (CONFIRM - 1) + [1003 + k]
    got = imports(f, seq)
    assert_never_decreases(got)
    assert max(v for v in got if v is not None) == 1007
    assert f.meter_resets == 0


def test_export_missing_stays_none_and_import_still_flows():
    f = new()
    got = feed(f, [R(imp=10 + k, exp=None) for k in range(CONFIRM + 1)])
    assert got[-1] == (None, 10 + CONFIRM, None, None)


def test_changed_multiplier_publishes_nothing_until_it_persists():
    f = new()
    c = Clock()
    feed(f, [R(watts=100, imp=10 + k) for k in range(CONFIRM)], c)
    got = feed(f, [R(watts=300, imp=33, mult=3), R(watts=100, imp=13), R(watts=300, imp=36, mult=3),
                   R(watts=300, imp=36, mult=3), R(watts=300, imp=37, mult=3)], c)
    assert [g[0] for g in got] == [None, 100, None, None, 300]
    assert f.rejected_scale == 3


def test_zcl_totals_continue_our_series_after_a_reboot():
    # Before the reboot the meter was reset once: published = meter + 4,000,000.
    state = {"fmt": "zcl", "in": 4001000, "m_in": 1000, "o_in": 4000000, "out": 700, "m_out": 700,
             "o_out": 0}
    f = new({"in": 4001000, "out": 700, "state": state})
    got = feed(f, [R(imp=1100 + k, exp=700) for k in range(CONFIRM + 1)])
    assert [g[1] for g in got][CONFIRM - 1:] == [4001100 + CONFIRM - 1, 4001100 + CONFIRM]
    assert got[-1][2] == 700
    assert f.meter_resets == 0


def test_zcl_meter_below_our_record_after_a_reboot_is_a_reset_said_in_words():
    state = {"fmt": "zcl", "in": 1500000, "m_in": 1500000, "o_in": 0}
    f = new({"in": 1500000, "state": state})
    got = imports(f, [300 + k for k in range(CONFIRM + 2)])
    assert_never_decreases(got)
    assert [v for v in got if v is not None] == [1500000, 1500001, 1500002]
    assert f.meter_resets == 1 and "meter reset or replacement" in warnings(f)[0]


def test_zcl_retained_floor_is_used_when_the_meter_reads_a_little_below_it():
    # The seen failure: totals read back from the broker but not used as a floor for ZCL meters.
    f = new({"in": 1501500})  # retained by an earlier firmware: no record of ours
    got = imports(f, [1500000 + k * 300 for k in range(CONFIRM + 5)])
    pub = [v for v in got if v is not None]
    assert pub[:3] == [1501500] * 3  # held until the meter passes it ...
    assert pub[-2:] == [1500000 + (CONFIRM + 3) * 300, 1500000 + (CONFIRM + 4) * 300]  # ... then the meter
    assert_never_decreases(got)


def test_a_retained_floor_far_above_the_meter_does_not_freeze_the_totals():
    first = 1500000 + CONFIRM - 1
    for floor in (first + HOLD_WH + 1, 999999999, 999999999999):
        f = new({"in": floor})
        got = imports(f, [1500000 + k for k in range(CONFIRM + 1)])
        assert got[-2:] == [1500000 + CONFIRM - 1, 1500000 + CONFIRM], floor
        assert any("ignored" in w and str(floor) in w for w in warnings(f)), floor


def test_v2_net_counter_splits_into_consumed_and_returned():
    f = new()
    nets = [5000, 5001, 5002, 5012, 5032, 5022, 5007, 5008]
    got = feed(f, [R("v2", net=n) for n in nets])
    # First ever start: consumed starts at the meter's net counter; no zero "returned" is published.
    assert got[CONFIRM - 1] == (None, 5002, None, 5002)
    assert got[CONFIRM][1:] == (5012, None, 5012)
    assert got[CONFIRM + 1][1:] == (5032, None, 5032)
    assert got[CONFIRM + 2][1:] == (5032, 10, 5022)
    assert got[CONFIRM + 3][1:] == (5032, 25, 5007)
    assert got[CONFIRM + 4][1:] == (5033, 25, 5008)


def test_v2_glitch_on_net_counter_changes_no_total():
    f = new()
    got = feed(f, [R("v2", net=n) for n in (5000, 5001, 5002, 4000000, 5003, 1, 5004)])
    assert [g[1] for g in got if g[1] is not None] == [5002, 5003, 5004]
    assert [g[2] for g in got if g[1] is not None] == [None, None, None]
    assert f.rejected_wh == 2


def test_v2_energy_used_during_an_outage_is_counted():
    f = new()
    c = Clock()
    feed(f, [R("v2", net=n) for n in (5000, 5001, 5002)], c)
    c.t += 4 * 3600 * S
    got = feed(f, [R("v2", net=n) for n in (45002, 45003)], c)
    assert got[0][1:] == (45002, None, 45002)
    assert f.meter_resets == 0


def test_v2_totals_restored_after_reboot_continue_without_a_drop():
    f = new({"state": {"fmt": "v2", "in": 123456, "out": 789, "m_net": 5000}})
    got = feed(f, [R("v2", net=n) for n in (5100, 5100, 5100, 5050)])
    # The energy used while the device was off (100 Wh) is counted, nothing starts from zero.
    assert got[CONFIRM - 1][1:] == (123556, 789, 5100)
    assert got[CONFIRM][1:] == (123556, 839, 5050)


def test_v2_restore_far_from_the_live_counter_rebaselines_without_spike():
    f = new({"state": {"fmt": "v2", "in": 123456, "out": 789, "m_net": 5000}})
    got = feed(f, [R("v2", net=n) for n in (3000000, 3000001, 3000002, 3000003)])
    assert got[CONFIRM - 1][1:] == (123456, 789, 3000002)
    assert got[CONFIRM][1:] == (123457, 789, 3000003)
    assert f.meter_resets == 1 and "reset or replacement" in warnings(f)[0]


def test_v2_absurd_retained_total_is_not_adopted():
    # The seen failure: 999,999,999,999 Wh retained on energy/in became the v2 baseline.
    for bogus in (999999999999, 5000000000):
        f = new({"in": bogus, "out": 10, "net": 5000})
        got = feed(f, [R("v2", net=n) for n in (5000, 5001, 5002, 5003)])
        assert got[-1][1] < 10000000, bogus
        assert any("ignored" in w for w in warnings(f)), bogus


def test_v2_totals_retained_by_an_earlier_firmware_are_continued():
    f = new({"in": 123456, "out": 789, "net": 122667})
    got = feed(f, [R("v2", net=n) for n in (122667, 122668, 122670)])
    assert got[-1][1:] == (123459, 789, 122670)


def test_v2_newest_record_wins_between_flash_and_broker():
    flash = {"fmt": "v2", "in": 1000, "out": 50, "m_net": 950}
    broker = {"fmt": "v2", "in": 1200, "out": 60, "m_net": 1140}
    f = new({"state": broker}, flash=flash)
    got = feed(f, [R("v2", net=1140 + k) for k in range(CONFIRM)])
    assert got[-1][1:] == (1200 + CONFIRM - 1, 60, 1140 + CONFIRM - 1)


def test_snapshot_round_trip_keeps_the_series():
    f = new()
    imports(f, [5000000, 5000010, 5000020, 30, 31, 32, 33])  # a reset: offset carried
    s = f.snapshot()
    g = new({"in": s["in"], "state": s})
    got = imports(g, [40, 41, 42, 43])
    assert [v for v in got if v is not None][0] >= s["in"]
    assert_never_decreases([s["in"]] + got)


def test_a_value_held_at_a_reboot_stays_held():
    # +1,200 Wh in 5 minutes is possible, so it was published; the meter then read less: the total
    # holds. After a reboot it must still hold, not add the difference a second time.
    f = new()
    c = Clock()
    imports(f, [100000, 100010, 100020, 101220, 100030], c, dt=300 * S)
    s = f.snapshot()
    assert s["in"] == 101220 and s["m_in"] == 100030
    g = new({"in": s["in"], "state": s})
    got = imports(g, [100040, 100050, 100060, 101000, 101230], c)
    assert [v for v in got if v is not None] == [101220, 101220, 101230]


def test_snapshot_before_restore_keeps_what_was_loaded():
    rec = {"fmt": "v2", "in": 10, "out": 0, "m_net": 9}
    f = new(retained=False, flash=rec)
    assert f.snapshot() == rec


def test_totals_above_2_30_cross_the_pair_boundary_exactly():
    # Totals are pairs (Wh = hi * 10**9 + lo): a 1,000,000 kWh meter and beyond, across hi steps.
    for base in (999999990, 10 ** 10 - 15, 9 * 10 ** 10 - 7):
        f = new()
        c = Clock()
        got = feed(f, [R(imp=base + 5 * k, exp=base // 2 + k) for k in range(8)], c)
        assert [g[1] for g in got][CONFIRM - 1:] == [base + 5 * k for k in range(CONFIRM - 1, 8)]
        i, o, n = f.text()
        assert (i, o, n) == (str(base + 35), str(base // 2 + 7), str(base + 35 - base // 2 - 7))
        # A glitch of 10**9 Wh and a reset from there carry the offset across pairs too.
        got = imports(f, [base + 10 ** 9 + 40, base + 45, 12, 13, 14, 15], c)
        assert got[0] is None and got[1] == base + 45
        assert [v for v in got if v is not None][-2:] == [base + 45, base + 46]  # 14, then 15
        assert f.snapshot()["o_in"] == base + 45 - 14


def test_text_of_negative_and_small_pairs():
    assert readings.fmt_wh(0, 5) == "5"
    assert readings.fmt_wh(2, 5) == "2000000005"
    assert readings.fmt_wh(-1, 999999995) == "-5"
    assert readings.fmt_wh(-3, 0) == "-3000000000"
    assert readings.fmt_wh(-3, 1) == "-2999999999"
    assert readings.diff(2, 5, 1, 999999990) == 15
    assert readings.diff(1, 999999990, 2, 5) == -15
    assert readings.diff(5, 0, 1, 0) == readings.HUGE and readings.diff(1, 0, 5, 0) == -readings.HUGE


def test_zcl_net_may_be_negative_in_text():
    f = new()
    feed(f, [R(imp=1000 + k, exp=5000 + k) for k in range(CONFIRM)])
    assert tuple(f.text()) == ("1002", "5002", "-4000")


def test_a_total_no_meter_can_show_is_a_bad_value_like_zero():
    f = new()
    got = imports(f, [10 ** 11, 10 ** 11, 10 ** 11, 10 ** 12, 5, 6, 7, 8])
    assert [v for v in got if v is not None] == [7, 8]
    assert f.rejected_wh == 4


def test_record_values_are_written_as_fmt_wh_writes_them():
    # record() formats each pair inside one "%s%0*d" per value: same digits as fmt_wh, any sign/size
    g = readings.GIGA
    a = [0] * 3
    for h in (-101, -2, -1, 0, 1, 2, 99, 100):
        for l in (0, 1, 9, 10, 123456, g // 2, g - 1):
            readings._wh_args(h, l, a, 0)
            text = readings._WH % tuple(a)
            assert text == readings.fmt_wh(h, l), (h, l, text)
            assert int(text) == h * g + l, (h, l, text)


def test_the_record_text_is_the_snapshot():
    import json
    for fmt in ("zcl", "v2"):
        f = new()
        c = Clock()
        if fmt == "zcl":
            feed(f, [R(imp=3 * 10 ** 9 + k, exp=7 + k) for k in range(CONFIRM + 1)], c)
            imports(f, [5, 6, 7], c)  # a reset: an offset in the record
        else:
            feed(f, [R("v2", net=5000 + k) for k in range(CONFIRM + 1)], c)
        assert json.loads(f.record()) == f.snapshot(), fmt
    f = new(retained=False, flash={"fmt": "v2", "in": 10, "out": 0, "m_net": 9})
    assert f.record() is None  # before the restore nothing is published, nor our record
    f.restore({})
    assert json.loads(f.record()) == {"fmt": "v2", "in": 10, "out": 0, "m_net": 9}
