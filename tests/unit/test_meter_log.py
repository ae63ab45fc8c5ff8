# MeterSession's MGM log mode (issue 13) driven byte for byte through the real Link and FrameParser:
# readings from received-message lines when `r` cannot be read, the cross-check when both can,
# redaction, the loglevel commands, and the one choke point for everything written to the module.
# Plain asserts only: runs under CPython (pytest) and MicroPython (tests/unit_runner.py).
import time

if not hasattr(time, "ticks_ms"):  # CPython: the few MicroPython time functions meter.py uses
    time.ticks_ms = lambda: int(time.time() * 1000)
    time.ticks_diff = lambda a, b: a - b
    time.ticks_add = lambda a, b: a + b

import decoders  # noqa: E402
import heap_probe  # noqa: E402
import log  # noqa: E402
import meter  # noqa: E402
from mgm_lines import got_meter_rsp, rx_line  # noqa: E402
from mgm_link import Forbidden, Link  # noqa: E402
from mgm_payloads import frame, v2_payload, zcl_payload  # noqa: E402
from mgm_uart import CMD_READING  # noqa: E402

INSTALL_CODE_HEX = "83FED3407A939723"
KEY_HEX = "5A6967426565416C6C69616E63653039"


class Uart:
    def __init__(self):
        self.written = []

    def readinto(self, buf):
        return 0

    def write(self, data):
        self.written.append(bytes(data))

    def reinit(self):
        pass


class Session:
    """A MeterSession on a real Link whose parser is fed by hand; records what comes out."""

    def __init__(self, mgm_log=True, version=8):
        self.uart = Uart()
        self.readings = []  # (source, watts, import, export, net)
        self.rx = []
        self.undecoded = 0
        self.logged = []
        self.m = meter.MeterSession(lambda f, lg: Link(self.uart, f, lg), self.on_reading,
                                    lambda s: None, self.on_undecoded, 30, 0, 1,
                                    mgm_log=mgm_log, on_rx_line=self.on_rx_line)
        self.m.version = version

    def on_reading(self, r, payload):
        self.readings.append((self.m.reading_source, r.watts, r.import_wh, r.export_wh, r.net_wh))

    def on_undecoded(self, payload, message):
        self.undecoded += 1

    def on_rx_line(self, cluster, view, n):
        self.rx.append((cluster, bytes(view[:n])))

    def feed(self, data):
        old = log._emit
        log._emit = lambda level, text: self.logged.append((level, text))
        try:
            self.m.link.parser.feed(data)
        finally:
            log._emit = old
        return self

    def call(self, fn, *args):
        old = log._emit
        log._emit = lambda level, text: self.logged.append((level, text))
        try:
            return fn(*args)
        finally:
            log._emit = old

    def text(self):
        return "\n".join(t for _, t in self.logged)

    def warnings(self):
        return [t for lv, t in self.logged if lv == "warn"]


def zcl(seq, watts, imp=1500000, exp=None):
    return zcl_payload(seq, imp, exp, 1, 1000, watts)


def line(z, cluster=0x0702):
    return (rx_line(cluster, z, ts=seq_of(z) * 1000) + "\r\n" + got_meter_rsp(z) + "\r\n").encode()


def seq_of(z):
    return z[1]


def unknown(seq):
    # A layout nobody has decoded (what v4/v6 answer): neither 152 bytes nor 18 xx 01.
    return bytes([0xA7, 0x04, seq]) + bytes(61)


def test_unreadable_r_payload_readings_come_from_the_log_lines():
    s = Session(version=6)
    want = []
    for k in range(6):
        z = zcl(k, 400 + 10 * k, 1500000 + k)
        want.append(("log", 400 + 10 * k, 1500000 + k, None, None))
        # Either order on the wire: the line before the answer, or after it.
        if k % 2:
            s.feed(line(z) + frame(CMD_READING, unknown(k)))
        else:
            s.feed(frame(CMD_READING, unknown(k)) + line(z))
    assert s.readings == want
    assert s.undecoded == 6  # the unreadable payloads still go to the debug topic
    assert s.m.source == "log" and "own log lines" in s.m.source_text
    assert s.m.state == meter.OK and s.m.log_readings == 6 and s.m.readings == 6
    assert [c for c, _ in s.rx] == [0x0702] * 6
    # Expected in this mode, so said as information (and once): no warning, no unknown_layout.
    assert s.warnings() == []
    assert "cannot decode reading (MGM v6): unknown payload layout" in s.text()


def test_both_decode_cross_checked_one_reading_per_message():
    s = Session(version=8)
    for k in range(5):
        z = zcl(k, -250 + k, 1000000 + k, 12345)
        if k % 2:
            s.feed(line(z) + frame(CMD_READING, z))
        else:
            s.feed(frame(CMD_READING, z) + line(z))
    assert s.readings == [("r", -250 + k, 1000000 + k, 12345, None) for k in range(5)]
    assert (s.m.cross_checked, s.m.cross_mismatches) == (5, 0)
    assert s.m.source == "r+log (cross-checked)" and "5 agreed, 0 disagreed" in s.m.source_text
    assert s.warnings() == []


def test_a_disagreement_is_reported_and_never_averaged():
    s = Session()
    s.feed(line(zcl(9, 440)) + frame(CMD_READING, zcl(9, 540)))
    s.feed(frame(CMD_READING, zcl(10, 600, 1500010)) + line(zcl(10, 600, 1500099)))
    assert [r[1] for r in s.readings] == [540, 600]  # the `r` values, as they were
    assert [r[2] for r in s.readings] == [1500000, 1500010]
    assert s.m.cross_mismatches == 2 and s.m.cross_checked == 0
    w = s.warnings()
    assert len(w) == 1 and "disagree" in w[0] and "power 540 W vs 440 W" in w[0]
    assert "nothing is averaged" in w[0]


def test_v2_answers_are_cross_checked_by_time_and_net_energy():
    s = Session(version=2)
    s.feed(line(zcl(3, 700, 1500000, 200000)) + frame(CMD_READING, v2_payload(1300000, 700)))
    assert s.readings == [("r", 700, None, None, 1300000)]
    assert (s.m.cross_checked, s.m.cross_mismatches) == (1, 0)


def test_a_log_line_stands_in_when_one_r_answer_is_unreadable_and_never_doubles_one():
    s = Session()
    s.feed(frame(CMD_READING, zcl(1, 500)) + line(zcl(1, 500)))
    missing = zcl_payload(2, None, None, 1, 1000, None)  # no values at all: NO_VALUES
    s.feed(line(zcl(2, 510)) + frame(CMD_READING, missing))
    # The next line arrives while the last answer was unreadable: published at once; its `r`
    # twin then agrees and is not published a second time.
    s.feed(line(zcl(3, 520)) + frame(CMD_READING, zcl(3, 520)))
    assert [(r[0], r[1]) for r in s.readings] == [("r", 500), ("log", 510), ("log", 520)]
    assert s.m.cross_checked == 2


def test_cut_and_garbled_lines_give_nothing_and_say_why():
    s = Session()
    good = rx_line(0x0702, zcl(4, 440))
    s.call(s.m._send_level_if_due)
    s.feed(frame(CMD_READING, unknown(3)))
    s.feed((good[:100] + "\r\n").encode())  # the module lost the rest
    s.feed((good[:100] + got_meter_rsp(zcl(4, 440)) + "\r\n").encode())  # ... and ran on
    n = len(zcl(4, 440))
    s.feed((good.replace("len %d" % n, "len %d" % (n - 4)) + "\r\n").encode())
    assert s.readings == [] and s.m.rx_bad == 3 and s.m.rx_lines == 0
    assert "received-message line" in s.text() and "cut short" in s.text()
    assert s.m.log_text.startswith("on, but none of the MGM111's received-message lines could be read")


def test_keys_and_the_install_code_never_leave_the_session():
    s = Session()
    sp = " ".join(KEY_HEX[i:i + 2] for i in range(0, 32, 2))
    for text in ("NWK Key: " + sp, "Install code: " + INSTALL_CODE_HEX + " CRC 1234",
                 "  " + KEY_HEX, "Link key table index 0"):
        s.feed((text + "\r\n").encode())
        s.m._print_ms = None  # the console rate limit aside: each line is judged
    ke = bytes([0x19, 0x05, 0x00]) + bytes.fromhex(KEY_HEX)  # Key Establishment: key data
    s.feed(line(ke, cluster=0x0800))
    out = s.text() + repr(s.rx)
    for secret in (KEY_HEX, sp, INSTALL_CODE_HEX, bytes.fromhex(KEY_HEX).hex()):
        assert secret not in out and secret.lower() not in out.lower(), secret
    assert s.rx == [(0x0800, ke[:3])]  # the ZCL header only
    assert s.m.redacted_lines == 5
    assert "not shown: it may hold a key or the install code" in s.text()


def test_ordinary_log_text_still_reaches_the_console():
    s = Session(mgm_log=False)
    s.feed(b"[I] zb: poll 0x0702 ep 1 rssi -70 lqi 200\r\n")
    assert "MGM: [I] zb: poll 0x0702 ep 1 rssi -70 lqi 200" in s.text()


def test_mode_off_ignores_received_message_lines_and_asks_for_quiet_once():
    s = Session(mgm_log=False)
    for k in range(3):
        s.feed(line(zcl(k, 300)) + frame(CMD_READING, unknown(k)))
        s.call(s.m._send_level_if_due)
    assert s.readings == [] and s.rx == []
    assert s.uart.written == [b"loglevel 10\r"]
    assert s.m.log_text == "off"


def test_switching_the_mode_sends_loglevel_and_nothing_else():
    s = Session(mgm_log=False)
    s.call(s.m._send_level_if_due)
    assert s.uart.written == []  # off from the start: the module is left as it is
    s.m.set_mgm_log(True)
    s.call(s.m._send_level_if_due)
    s.m.set_mgm_log(True)
    s.call(s.m._send_level_if_due)
    s.m.set_mgm_log(False)
    s.call(s.m._send_level_if_due)
    assert s.uart.written == [b"loglevel 20\r", b"loglevel 10\r"]
    s2 = Session(mgm_log=True)
    s2.call(s2.m._send_level_if_due)
    assert s2.uart.written == [b"loglevel 20\r"]


def test_a_module_that_ignores_loglevel_is_reported_once():
    s = Session(version=2)
    s.call(s.m._send_level_if_due)
    for k in range(8):
        s.feed(frame(CMD_READING, v2_payload(1300000 + k, 700)))
        s.call(s.m._check_log_mode)
    w = s.warnings()
    assert len(w) == 1 and "ignores loglevel" in w[0] and "v2" in w[0]
    assert s.m.log_ignored and "ignores loglevel" in s.m.log_text
    assert s.m.source == "r" and len(s.readings) == 8
    s.feed(line(zcl(1, 700)))
    assert not s.m.log_ignored


def test_lines_that_stop_coming_get_loglevel_sent_again():
    s = Session()
    s.call(s.m._send_level_if_due)
    s.feed(line(zcl(0, 100)) + frame(CMD_READING, zcl(0, 100)))
    for k in range(1, 12):
        s.feed(frame(CMD_READING, zcl(k, 100 + k)))
        s.call(s.m._check_log_mode)
        s.call(s.m._send_level_if_due)
    assert s.uart.written == [b"loglevel 20\r", b"loglevel 20\r"]
    assert not s.warnings()


def test_the_link_refuses_every_command_but_the_documented_ones():
    s = Session()
    link = s.m.link
    for bad in (b"leave\r", b"reset\r", b"printKeys\r", b"$d\r", b"loglevel 30\r", b"keys\r",
                b"$r\r$d\r", b"network leave\r"):
        try:
            link.write(bad)
        except Forbidden as e:
            assert "refused" in str(e)
        else:
            raise AssertionError("%r was written" % bad)
    try:
        link.send(ord("d"))
    except Forbidden:
        pass
    else:
        raise AssertionError("$d was written")
    for lvl in (30, 0, 99):
        try:
            link.set_loglevel(lvl)
        except Forbidden:
            pass
        else:
            raise AssertionError("loglevel %d was written" % lvl)
    assert s.uart.written == []
    for cmd in b"rjmif":
        link.send(cmd)
    link.set_loglevel(20)
    link.set_loglevel(10)
    assert s.uart.written == [b"$r\r", b"$j\r", b"$m\r", b"$i\r", b"$f\r", b"loglevel 20\r",
                              b"loglevel 10\r"]


def test_allocation_per_log_line():
    # MicroPython only. A line of another cluster handed to the debug callback costs no heap; a
    # Simple Metering line decoded into a reading costs what the ZCL decoder costs (0 B on the 64-bit
    # port; on 32-bit ports its uint48 no-value check makes a long int).
    if not heap_probe.MEASURABLE:
        return
    s = Session(version=6)
    m = s.m
    s.rx = None
    m.on_rx_line = lambda c, v, n: None
    m.on_reading = lambda r, p: None
    other = [bytearray(rx_line(0x000A, bytes([0x18, k, 0x0A, 0, 0, 0xE2, 1, 2, 3, 4])).encode())
             for k in range(60)]
    readings = [bytearray(rx_line(0x0702, zcl(k, 400 + k, 1500000 + k)).encode()) for k in range(60)]
    plain = bytearray(b"-- Got Meter Rsp, len=37")
    s.feed(frame(CMD_READING, unknown(1)))  # `r` unreadable: log lines are the source
    m._mgm_log(readings[0], 0, len(readings[0]))
    m._mgm_log(other[0], 0, len(other[0]))
    m._print_ms = time.ticks_ms() + 3600000  # the console is not what is measured
    it = [1]

    def one_other():
        b = other[it[0]]
        m._mgm_log(b, 0, len(b))
        m._mgm_log(plain, 0, len(plain))

    def one_reading():
        b = readings[it[0]]
        it[0] += 1
        m._mgm_log(b, 0, len(b))

    zs = [zcl(k, 400 + k, 1500000 + k) for k in range(60)]
    out = decoders.Reading()

    def decode_only():
        decoders.decode(zs[it[0]], out)
        it[0] += 1

    grown_other = heap_probe.allocated(one_other, 50)
    it[0] = 1
    grown_reading = heap_probe.allocated(one_reading, 50)
    it[0] = 1
    grown_decoder = heap_probe.allocated(decode_only, 50)
    assert m.log_readings == 51, m.log_readings
    assert grown_other == 0, "%d bytes for 100 other lines" % grown_other
    # The session adds nothing to what the ZCL decoder itself costs (0 on the 64-bit port).
    assert grown_reading <= grown_decoder, "%d bytes for 50 reading lines, the decoder alone %d" % (
        grown_reading, grown_decoder)
