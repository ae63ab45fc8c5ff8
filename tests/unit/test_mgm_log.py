# The MGM111's received-message log lines (firmware/decoders/mgm_log.py): ZCL bytes back out of the
# text, whole or not at all. Plain asserts only: runs under CPython (pytest) and MicroPython
# (tests/unit_runner.py).
import decoders
import heap_probe
from decoders import mgm_log
from mgm_lines import got_meter_rsp, rx_line
from mgm_payloads import zcl_payload

# protocol.md, "The MGM111's own command line", character for character.
EXAMPLE = ("T00000000:RX len 37, ep 01, clus 0x0702 (Simple Metering) FC 18 seq B7 cmd 01 payload[00 00 "
           "00 25 FA DB 04 00 00 00 01 00 86 01 03 00 22 01 00 00 02 03 00 22 E8 03 00 00 04 00 2A B8 01 "
           "00 ]")
EXAMPLE_ZCL = bytes([0x18, 0xB7, 0x01]) + bytes([
    0x00, 0x00, 0x00, 0x25, 0xFA, 0xDB, 0x04, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x86,
    0x01, 0x03, 0x00, 0x22, 0x01, 0x00, 0x00,
    0x02, 0x03, 0x00, 0x22, 0xE8, 0x03, 0x00,
    0x00, 0x04, 0x00, 0x2A, 0xB8, 0x01, 0x00])


def parse(text, rx=None):
    """Parse text as the firmware does: inside a bigger buffer, at an offset."""
    b = text.encode() if isinstance(text, str) else text
    buf = bytearray(7) + bytearray(b) + bytearray(5)
    if rx is None:
        rx = mgm_log.RxLine()
    n = mgm_log.parse(buf, 7, 7 + len(b), rx)
    return n, rx


def raises(text, words):
    try:
        n, _ = parse(text)
    except decoders.DecodeError as e:
        assert words in str(e), str(e)
        return str(e)
    raise AssertionError("no DecodeError for %r (returned %d)" % (text, n))


def test_protocol_md_example_line():
    n, rx = parse(EXAMPLE)
    assert n == 37 and rx.length == 37
    assert (rx.cluster, rx.endpoint, rx.fc, rx.seq, rx.cmd, rx.mfg) == (0x0702, 1, 0x18, 0xB7, 1, -1)
    assert bytes(rx.zcl[:n]) == EXAMPLE_ZCL
    assert rx.is_reading()
    # The same bytes are a v7/v8 `r` payload: the existing ZCL decoder reads them.
    r = decoders.decode(rx.view[:n])
    assert r.format == "zcl" and r.seq == 0xB7
    assert r.import_wh == 318458
    assert r.export_wh is None  # attribute 0x0001 answered 0x86: unsupported
    assert (r.multiplier, r.divisor, r.watts) == (1, 1000, 440)


def test_the_encoder_prints_the_example_exactly():
    assert rx_line(0x0702, EXAMPLE_ZCL) == EXAMPLE


def test_other_log_text_is_not_a_received_message_line():
    for text in ("-- Got Meter Rsp, len=37", got_meter_rsp(EXAMPLE_ZCL), "RX", "T00000000:",
                 "T00000000:TX len 5, ep 01, clus 0x0702", "[I] zb: poll 0x0702 ep 1 rssi -70",
                 "No such command", "TX RX len 3", "x"):
        assert parse(text)[0] == -1, text


def test_variants_a_module_may_print():
    z = zcl_payload(0x24, 1000000, 12345, 1, 1000, -250)  # seq 0x24 is '$'
    # No timestamp, no cluster name, lower-case hex, one-digit fields, extra blanks.
    n, rx = parse("RX len %d, ep 1, clus 0x702 FC 18 seq 24 cmd 1 payload[%s]" % (
        len(z), " ".join("%x" % b for b in z[3:])))
    assert bytes(rx.zcl[:n]) == z and rx.cluster == 0x0702
    # A manufacturer-specific frame: its code goes back between FC and seq.
    m = bytes([0x1D, 0x34, 0x12, 0x05, 0x07, 0xAA])
    n, rx = parse(rx_line(0xFC00, m, mfg=0x1234))
    assert bytes(rx.zcl[:n]) == m and rx.mfg == 0x1234 and not rx.is_reading()
    # Another cluster, an empty payload.
    n, rx = parse(rx_line(0x000A, bytes([0x08, 0x01, 0x0B])))
    assert n == 3 and rx.cluster == 0x000A and not rx.is_reading()


def test_default_response_bit_still_a_reading_but_not_other_commands():
    z = bytearray(EXAMPLE_ZCL)
    z[0] = 0x08
    assert parse(rx_line(0x0702, z))[1].is_reading()
    z[2] = 0x0A  # Report Attributes: another record layout
    assert not parse(rx_line(0x0702, z))[1].is_reading()
    z[2] = 0x01
    z[0] = 0x19  # cluster-specific command
    assert not parse(rx_line(0x0702, z))[1].is_reading()


def _random_zcl(x, n):
    out = bytearray(n)
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return bytes(out), x


def test_any_bytes_come_back_exactly():
    x = 99
    rx = mgm_log.RxLine()
    for n in range(3, 72):
        z, x = _random_zcl(x, n)
        cluster = (x >> 8) & 0xFFFF
        got, rx = parse(rx_line(cluster, z, ts=x, ep=x & 0xFF, name=n % 3 != 0), rx)
        assert got == n and bytes(rx.zcl[:n]) == z and rx.cluster == cluster


def test_a_cut_line_never_gives_bytes():
    # Wherever the line ends (a pause, LINE_MAX, a lost tail), its bytes are all or nothing.
    line = rx_line(0x0702, zcl_payload(7, 1000000, 12345, 1, 1000, -250))
    started = False
    for k in range(len(line)):
        try:
            n, _ = parse(line[:k])
        except decoders.DecodeError as e:
            started = True
            assert "cut" in str(e) or "garbled" in str(e), str(e)
            continue
        assert n == -1 and not started, "cut at %d gave %d bytes" % (k, n)
    # A cut exactly at a record boundary that lost its ']' too: the declared len says so.
    z = zcl_payload(7, 1000000, 12345, 1, 1000, -250)
    cut = rx_line(0x0702, z).replace("len %d" % len(z), "len %d" % (len(z) + 7))
    raises(cut[:cut.index("00 04 00 2A")] + "]", "says len")


def test_garbled_lines_are_refused_in_words():
    raises(EXAMPLE.replace("len 37", "len 36"), "says len 36 but holds 37")
    raises(EXAMPLE.replace("FA DB", "FA ZZ"), "not a hex byte")
    raises(EXAMPLE.replace("seq B7 ", ""), "incomplete")
    raises(EXAMPLE.replace("clus 0x0702", "clus 0xZZ"), "no cluster number")
    raises(EXAMPLE.replace("payload[", "payload "), "expected FC, seq, cmd or payload[")
    raises("T00000000:RX len", "cut short")
    # A half line joined to the next one (the module lost the rest).
    raises(EXAMPLE[:120] + "-- Got Meter Rsp, len=37", "garbled")


def test_more_bytes_than_the_buffer_holds():
    z, _ = _random_zcl(5, 40)
    n, rx = parse(rx_line(0x0702, z), mgm_log.RxLine(40))
    assert n == 40
    try:
        parse(rx_line(0x0702, z + b"\x01"), mgm_log.RxLine(40))
    except decoders.DecodeError as e:
        assert "more than 40" in str(e)
    else:
        raise AssertionError("overflow not refused")


def test_parse_text_for_tools():
    assert mgm_log.parse_text(EXAMPLE + "\r\n") == (0x0702, EXAMPLE_ZCL)
    assert mgm_log.parse_text("-- Got Meter Rsp, len=37") is None


def secret(text):
    b = text.encode()
    return mgm_log.may_hold_secret(b, 0, len(b))


def test_lines_that_may_show_keys_or_the_install_code():
    for text in ("NWK Key: 00 11 22 33", "printKeys", "Link KEY table", "TC key 0x1234",
                 "Install code: 83FED3407A939723A5C639B26916D505 CRC C3B5",
                 "install_code 0102030405060708", "00112233445566778899AABBCCDDEEFF",
                 "00 11 22 33 44 55 66 77 88 99 AA BB CC DD EE FF", "ic=0102030405060708"):
        assert secret(text), text
    for text in ("-- Got Meter Rsp, len=37", "[I] zb: poll 0x0702 ep 1 rssi -70 lqi 200",
                 "[D] ezsp: stack status 0x90 (network up), tx ok 5", "No such command",
                 "EUI64 mismatch", "T00000000:join 1"):
        assert not secret(text), text


def test_no_allocation_per_line():
    # The firmware reads every log line through parse(): it must cost no heap (MicroPython only).
    if not heap_probe.MEASURABLE:
        return
    rx = mgm_log.RxLine()
    lines = [bytearray(EXAMPLE.encode()), bytearray(b"-- Got Meter Rsp, len=37"),
             bytearray(rx_line(0x000A, bytes([0x08, 0x01, 0x0B, 0, 0]), name=False).encode())]
    count = [0]

    def one():
        for b in lines:
            if mgm_log.parse(b, 0, len(b), rx) >= 0:
                count[0] += 1
            mgm_log.may_hold_secret(b, 0, len(b))

    one()
    grown = heap_probe.allocated(one, 50)
    assert count[0] == 102
    assert grown == 0, "parse/may_hold_secret allocated %d bytes for 150 lines" % grown
