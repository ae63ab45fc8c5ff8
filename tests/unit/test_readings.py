# The plausibility filter: what may reach Home Assistant. Runs under CPython and MicroPython.
from readings import GLITCH_WH, MAX_WATTS, ReadingFilter


class R:
    def __init__(self, fmt="zcl", watts=None, imp=None, exp=None, net=None, mult=1, div=1000):
        self.format = fmt
        self.watts = watts
        self.import_wh = imp
        self.export_wh = exp
        self.net_wh = net
        self.multiplier = mult
        self.divisor = div


def feed(f, readings):
    """-> list of (watts, import, export, net) as published."""
    out = []
    for r in readings:
        a = f.apply(r)
        out.append((a.watts, a.import_wh, a.export_wh, a.net_wh))
    return out


def test_power_within_bounds_passes_and_out_of_range_is_dropped():
    f = ReadingFilter()
    got = feed(f, [R(watts=-250), R(watts=MAX_WATTS + 1), R(watts=-MAX_WATTS - 1), R(watts=131072)])
    assert [g[0] for g in got] == [-250, None, None, 131072]
    assert f.rejected_watts == 2


def test_first_total_needs_two_agreeing_readings():
    f = ReadingFilter()
    got = feed(f, [R(imp=1000000), R(imp=1000010), R(imp=1000020)])
    assert [g[1] for g in got] == [None, 1000010, 1000020]


def test_single_glitch_never_reaches_a_total():
    f = ReadingFilter()
    seq = [1000, 1001, 1002, 900000, 1003, 0, 1004, 1005]
    got = [g[1] for g in feed(f, [R(imp=v) for v in seq])]
    assert got == [None, 1001, 1002, None, 1003, None, 1004, 1005]
    published = [v for v in got if v is not None]
    assert published == sorted(published), "a total_increasing sensor must never go down"


def test_decrease_is_a_glitch_unless_it_persists_then_rebaseline():
    f = ReadingFilter()
    got = [g[1] for g in feed(f, [R(imp=v) for v in (5000, 5001, 10, 11, 12, 13)])]
    # A real meter reset: rejected twice, believed on the third agreeing reading.
    assert got == [None, 5001, None, None, 12, 13]
    assert f.imp.rebaselined == 1


def test_export_missing_stays_none_and_import_still_flows():
    f = ReadingFilter()
    got = feed(f, [R(imp=10, exp=None), R(imp=11, exp=None)])
    assert got[1] == (None, 11, None, None)


def test_changed_multiplier_publishes_nothing_until_it_persists():
    f = ReadingFilter()
    feed(f, [R(watts=100, imp=10), R(watts=100, imp=11)])
    got = feed(f, [R(watts=300, imp=33, mult=3), R(watts=100, imp=12), R(watts=300, imp=36, mult=3),
                   R(watts=300, imp=36, mult=3), R(watts=300, imp=37, mult=3)])
    assert [g[0] for g in got] == [None, 100, None, None, 300]
    assert f.rejected_scale == 3


def test_v2_net_counter_splits_into_consumed_and_returned():
    f = ReadingFilter()
    nets = [5000, 5010, 5030, 5020, 5005, 5006]
    got = feed(f, [R("v2", net=n) for n in nets])
    # First ever start: consumed starts at the meter's net counter, returned at 0.
    assert got[0] == (None, None, None, None)
    assert got[1] == (None, 5010, 0, 5010)
    assert got[2][1:] == (5030, 0, 5030)
    assert got[3][1:] == (5030, 10, 5020)
    assert got[4][1:] == (5030, 25, 5005)
    assert got[5][1:] == (5031, 25, 5006)


def test_v2_glitch_on_net_counter_changes_no_total():
    f = ReadingFilter()
    got = feed(f, [R("v2", net=n) for n in (5000, 5001, 4000000, 5002, 0x3FFFFF, 5003)])
    consumed = [g[1] for g in got if g[1] is not None]
    returned = [g[2] for g in got if g[2] is not None]
    assert consumed == [5001, 5002, 5003]
    assert returned == [0, 0, 0]


def test_v2_totals_restored_after_reboot_continue_without_a_drop():
    f = ReadingFilter()
    f.restore_v2(123456, 789, 5000)
    got = feed(f, [R("v2", net=5100), R("v2", net=5050)])
    # The energy used while the device was off (100 Wh) is counted, nothing starts from zero.
    assert got[0][1:] == (123556, 789, 5100)
    assert got[1][1:] == (123556, 839, 5050)


def test_v2_restore_far_from_the_live_counter_rebaselines_without_spike():
    f = ReadingFilter()
    f.restore_v2(123456, 789, 5000)
    got = feed(f, [R("v2", net=9000000), R("v2", net=9000001), R("v2", net=9000002)])
    assert got[0][1] is None
    assert got[1][1:] == (123456, 789, 9000001)
    assert got[2][1:] == (123457, 789, 9000002)


def test_v2_restore_takes_the_larger_of_two_sources():
    f = ReadingFilter()
    f.restore_v2(1000, 50, 400)  # flash file, older
    f.restore_v2(1200, 40, 420)  # retained MQTT
    assert (f.consumed, f.returned) == (1200, 50)


def test_glitch_bound_is_the_documented_2000_wh():
    f = ReadingFilter()
    got = [g[1] for g in feed(f, [R(imp=v) for v in (0, 1, 1 + GLITCH_WH, 2 + 2 * GLITCH_WH + 1)])]
    assert got == [None, 1, 1 + GLITCH_WH, None]
