# Golden vectors for the reading decoders (protocol.md), plus MAC/version/install code.
# Plain asserts only: runs under CPython (pytest) and MicroPython (tests/unit_runner.py).
import decoders
import heap_probe
from decoders import DecodeError, Reading, decode
from mgm_payloads import install_code_payload, mac_payload, v2_payload, zcl_payload

# protocol.md's hand-built example, typed in from the document (not from our encoder).
EXAMPLE = bytes.fromhex(
    "180701"
    "0000002540420F000000"
    "01000025393000000000"
    "01030022010000"
    "02030022E80300"
    "0004002A06FFFF")


def error_of(payload):
    """The DecodeError message for payload; fails the test if it decodes."""
    try:
        r = decode(payload)
    except DecodeError as e:
        assert isinstance(e, ValueError)
        return str(e)
    raise AssertionError("decoded without error: format %s watts %s" % (r.format, r.watts))


def v2_by_hand(energy=b"\x00\x01\xe2\x40", mult=1, div=b"\x03\xe8", power=b"\x00\x05\xdc",
               ms=b"\x78\x56\x34\x12"):
    # Built from the offsets table in protocol.md, independently of sim/mgm_payloads.py.
    p = bytearray(152)
    p[4:8] = energy
    p[47] = mult
    p[50:52] = div
    p[52:54] = b"\x2c\x2b"
    p[57:60] = power
    p[148:152] = ms
    return bytes(p)


def test_protocol_md_zcl_example():
    assert len(EXAMPLE) == 44
    r = decode(EXAMPLE)
    assert r.format == "zcl"
    assert r.import_wh == 1000000
    assert r.export_wh == 12345
    assert r.watts == -250
    assert (r.multiplier, r.divisor, r.seq) == (1, 1000, 7)
    assert r.net_wh is None and r.meter_ms is None


def test_encoder_reproduces_the_protocol_md_example():
    assert zcl_payload(7, 1000000, 12345, 1, 1000, -250) == EXAMPLE


def test_v2_positive_from_documented_offsets():
    r = decode(v2_by_hand())
    assert r.format == "v2"
    assert r.net_wh == 123456 and r.watts == 1500
    assert r.import_wh is None and r.export_wh is None and r.seq is None
    assert (r.multiplier, r.divisor) == (1, 1000)
    assert r.meter_ms == 0x12345678


def test_v2_encoder_matches_the_offsets_table():
    assert v2_payload(123456, 1500, meter_ms=0x12345678, constant=b"\x2c\x2b") == v2_by_hand()


def test_v2_negative_ones_complement():
    assert decode(v2_by_hand(power=b"\xff\xff\x05")).watts == -250
    assert decode(v2_by_hand(power=b"\xff\xff\xfe")).watts == -1
    assert decode(v2_payload(5000, -4321, negative="ones")).watts == -4321


def test_v2_negative_sign_magnitude():
    assert decode(v2_by_hand(power=b"\x80\x00\xfa")).watts == -250
    assert decode(v2_payload(5000, -4321, negative="signmag")).watts == -4321


def test_v2_missing_energy_markers_keep_the_power():
    for marker in (b"\x00\x00\x00\x00", b"\x00\x40\x00\x00"):
        r = decode(v2_by_hand(energy=marker))
        assert r.net_wh is None and r.watts == 1500


def test_v2_junk_energy_above_0x400000_is_dropped():
    r = decode(v2_by_hand(energy=b"\x00\x40\x00\x01"))
    assert r.net_wh is None and r.watts == 1500
    msg = error_of(v2_by_hand(energy=b"\x12\x34\x56\x78", power=b"\x80\x00\x00"))
    assert "0x12345678" in msg and "junk" in msg


def test_v2_missing_power_keeps_the_energy():
    r = decode(v2_by_hand(power=b"\x80\x00\x00"))
    assert r.watts is None and r.net_wh == 123456


def test_v2_nothing_usable_names_the_markers():
    msg = error_of(v2_payload(None, None))
    assert "0x00000000" in msg and "0x800000" in msg and "missing" in msg
    msg = error_of(v2_payload(0x400000, None))
    assert "0x00400000" in msg


def test_v2_multiplier_3_scales_energy_and_power():
    r = decode(v2_payload(1000, -250, multiplier=3))
    assert (r.net_wh, r.watts, r.multiplier) == (3000, -750, 3)


def test_v2_other_divisors():
    assert decode(v2_payload(1000, 500, divisor=100)).net_wh == 10000
    assert decode(v2_payload(1000, 500, divisor=10000)).net_wh == 100
    assert decode(v2_payload(1000, 500, divisor=3)).watts == 166666


def test_v2_implausible_scale_is_rejected():
    assert "multiplier 0" in error_of(v2_payload(1000, 5, multiplier=0))
    assert "multiplier 11" in error_of(v2_payload(1000, 5, multiplier=11))
    assert "divisor is 0" in error_of(v2_payload(1000, 5, divisor=0))


def test_zcl_missing_export_status_0x86():
    p = zcl_payload(9, 1000000, None, 1, 1000, 420)
    assert len(p) == 44 - 7
    r = decode(p)
    assert (r.import_wh, r.export_wh, r.watts, r.seq) == (1000000, None, 420, 9)


def test_zcl_missing_multiplier_or_divisor_cannot_scale():
    assert "cannot scale" in error_of(zcl_payload(1, 1000, 0, None, 1000, 5))
    assert "cannot scale" in error_of(zcl_payload(1, 1000, 0, 1, None, 5))
    assert "cannot scale" in error_of(zcl_payload(1, 1000, 0, None, None, 5))
    assert "cannot scale" in error_of(EXAMPLE[:3])


def test_zcl_truncated_inside_a_record_is_an_error():
    boundaries = (3, 13, 23, 30, 37, 44)
    for n in range(4, 44):
        if n in boundaries:
            continue
        msg = error_of(EXAMPLE[:n])
        assert "cut short" in msg or "no data type" in msg, (n, msg)


def test_zcl_shorter_payload_at_a_record_boundary_is_fine():
    r = decode(EXAMPLE[:37])  # no demand record
    assert (r.import_wh, r.export_wh, r.watts) == (1000000, 12345, None)


def test_zcl_unknown_type_is_named_with_its_offset():
    p = bytearray(EXAMPLE)
    p[16] = 0x99  # the export record's type byte
    msg = error_of(bytes(p))
    assert "0x99" in msg and "byte 16" in msg


def test_zcl_wrong_command_id():
    p = bytearray(EXAMPLE)
    p[2] = 0x0A
    msg = error_of(bytes(p))
    assert "0x0A" in msg and "Read Attributes Response" in msg


def test_zcl_harmless_extra_attributes_are_skipped():
    extra = (bytes.fromhex("00020018" "05")  # Status, bitmap8
             + bytes.fromhex("0003000a" "112233")  # 0x0300 UnitofMeasure as data24
             + bytes.fromhex("06030042" "03414243")  # char string "ABC"
             + bytes.fromhex("07030030" "01")  # enum8
             + bytes.fromhex("0204" "86"))  # unsupported, no value
    r = decode(EXAMPLE[:23] + extra + EXAMPLE[23:])
    assert (r.import_wh, r.export_wh, r.watts) == (1000000, 12345, -250)


def test_zcl_multiplier_3_and_other_divisors():
    r = decode(zcl_payload(0, 1000, 10, 3, 1000, -7))
    assert (r.import_wh, r.export_wh, r.watts) == (3000, 30, -21)
    r = decode(zcl_payload(0, 12345, 0, 1, 10000, -7))  # raw unit 0.1 Wh
    assert (r.import_wh, r.watts) == (1234, 0)
    r = decode(zcl_payload(0, 7, 0, 1, 3, -7))
    assert (r.import_wh, r.watts) == (2333, -2333)  # truncated toward zero, both signs


def test_zcl_implausible_scale():
    assert "multiplier 0" in error_of(zcl_payload(0, 1000, 0, 0, 1000, 5))
    assert "multiplier 1000" in error_of(zcl_payload(0, 1000, 0, 1000, 1000, 5))
    assert "divisor is 0" in error_of(zcl_payload(0, 1000, 0, 1, 0, 5))


def test_zcl_demand_sign_and_no_value_marker():
    assert decode(zcl_payload(0, 5, 0, 1, 1000, 131072)).watts == 131072
    assert decode(zcl_payload(0, 5, 0, 1, 1000, -1)).watts == -1
    assert decode(zcl_payload(0, 5, 0, 1, 1000, -0x7FFFFF)).watts == -0x7FFFFF
    r = decode(zcl_payload(0, 5, 0, 1, 1000, -0x800000))  # 80 00 00: ZCL's "no value"
    assert r.watts is None and r.import_wh == 5


def test_zcl_big_uint48_totals():
    r = decode(zcl_payload(0, 0xFFFFFFFFFE, 0x123456789A, 1, 1000, 0))
    assert r.import_wh == 0xFFFFFFFFFE and r.export_wh == 0x123456789A


def test_zcl_nothing_usable_names_what_was_missing():
    msg = error_of(zcl_payload(3, None, None, 1, 1000, None))
    assert "import has status 0x86" in msg and "power has status 0x86" in msg


def test_zcl_known_attribute_with_non_integer_type():
    p = bytearray(EXAMPLE)
    p[6] = 0x42  # import as a character string
    msg = error_of(bytes(p))
    assert "0x0000" in msg and "0x42" in msg


def test_unknown_layout_keeps_the_first_bytes_visible():
    msg = error_of(b"\x01\x02\x03\x04\x05")
    assert msg.startswith("unknown payload layout: 5 bytes, starts 01 02 03"), msg
    assert error_of(b"").startswith("unknown payload layout: 0 bytes")
    assert "151 bytes" in error_of(bytes(151))
    assert "153 bytes" in error_of(bytes(153))


def test_decode_into_a_reused_reading_clears_old_values():
    out = Reading()
    assert decode(EXAMPLE, out) is out
    decode(v2_payload(1000, 5), out)
    assert out.format == "v2" and out.import_wh is None and out.seq is None
    assert out.net_wh == 1000 and out.watts == 5


def test_decode_accepts_a_memoryview_into_a_bigger_buffer():
    buf = bytearray(260)
    buf[4:4 + 44] = EXAMPLE
    r = decode(memoryview(buf)[4:48])
    assert r.import_wh == 1000000


def test_mac_install_code_version():
    assert decoders.decode_mac(bytes.fromhex("1122334455667788")) == "88:77:66:55:44:33:22:11"
    assert decoders.decode_mac(mac_payload("00:0D:6F:00:0A:BC:DE:F1")) == "00:0D:6F:00:0A:BC:DE:F1"
    code = bytes.fromhex("0123456789ABCDEF")
    assert decoders.decode_install_code(install_code_payload(code)) == "0123456789ABCDEF"
    assert decoders.decode_version(b"\x08") == 8
    for bad in (b"", bytes(7), bytes(9)):
        try:
            decoders.decode_mac(bad)
            raise AssertionError("short MAC accepted")
        except DecodeError as e:
            assert "expected 8" in str(e)
    try:
        decoders.decode_version(b"")
        raise AssertionError("empty version accepted")
    except DecodeError:
        pass


def test_arbitrary_bytes_only_ever_raise_decode_error():
    # A small deterministic fuzz that also runs on MicroPython (hypothesis covers CPython).
    x = 99
    seeds = (EXAMPLE, v2_payload(123456, -250, multiplier=3), zcl_payload(1, 5, None, 1, 1000, 7))
    for k in range(600):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        base = bytearray(seeds[k % 3])
        for _ in range(1 + x % 4):  # flip a few bytes
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            base[x % len(base)] = (x >> 8) & 0xFF
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        if k % 5 == 0:
            base = base[:x % (len(base) + 1)]
        try:
            r = decode(bytes(base))
        except DecodeError:
            continue
        assert r.format in ("v2", "zcl")
        assert r.watts is not None or r.import_wh is not None or r.export_wh is not None \
            or r.net_wh is not None


def test_decoding_a_normal_reading_allocates_nothing():
    # The firmware decodes every few seconds for years: keep the heap quiet (MicroPython only).
    if not heap_probe.MEASURABLE:
        return
    out = Reading()
    for payload in (zcl_payload(7, 1000000, None, 1, 1000, -250), v2_payload(123456, -250)):
        view = memoryview(bytearray(payload))
        decode(view, out)
        grown = heap_probe.allocated(lambda: decode(view, out), 50)
        assert grown < 200, "%d bytes allocated by 50 decodes of a %s reading" % (grown, out.format)


def _zcl_total(value, type_id=0x25, size=6, mult=1, div=1000):
    """A ZCL reading whose import is `value` in `size` bytes of `type_id` (two's complement)."""
    import mgm_payloads
    raw = value & ((1 << (8 * size)) - 1)
    return (bytes((0x18, 1, 0x01)) + mgm_payloads.zcl_record(0x0000, type_id, raw, size)
            + mgm_payloads.zcl_record(0x0301, 0x22, mult, 3) + mgm_payloads.zcl_record(0x0302, 0x22, div, 3))


def test_totals_are_pairs_of_small_ints_equal_to_the_formula_over_the_uint48_range():
    # Wh = raw * multiplier * 1000 / divisor (truncated), kept as hi * 10**9 + lo so that no value
    # on the ESP32 exceeds its 31-bit small ints (tests/test_32bit.py measures that).
    top = (1 << 48) - 2
    values = [1, 999, 1000, 999999999, 1000000000, (1 << 30) - 1, 1 << 30, (1 << 31) + 5, 1 << 32,
              10 ** 12 + 7, 1 << 47, top]
    x = 12345
    for _ in range(20):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        values.append((x << 17 | x) % top + 1)
    for div in (1, 7, 10, 100, 1000, 3600, 10000, 0xFFFFFE):  # 0xFFFFFF is "no value"
        for mult in (1, 3, 10):
            for v in values:
                r = decode(_zcl_total(v, mult=mult, div=div))
                want = v * mult * 1000 // div
                assert r.imp_lo < 10 ** 9 and -(1 << 30) < r.imp_hi < (1 << 30)
                if want // 10 ** 9 >= decoders.MAX_HI:  # beyond 10**18 Wh: no meter, clipped
                    assert r.imp_hi == decoders.MAX_HI, (v, mult, div)
                    continue
                assert (r.imp_hi, r.imp_lo) == (want // 10 ** 9, want % 10 ** 9), (v, mult, div)
                assert r.import_wh == want


def test_zcl_no_value_marker_and_sign_are_read_from_the_bytes():
    assert "'no value' marker" in error_of(_zcl_total((1 << 48) - 1))  # uint48 all ones
    assert "'no value' marker" in error_of(_zcl_total(-(1 << 47), type_id=0x2D))  # int48 80 00..00
    assert decode(_zcl_total(-5000, type_id=0x2D)).import_wh == -5000
    assert decode(_zcl_total(-5001, type_id=0x2D, div=10000)).import_wh == -500  # toward zero
    assert decode(_zcl_total(-10 ** 13 - 1, type_id=0x2D)).import_wh == -10 ** 13 - 1
    assert decode(_zcl_total(10 ** 15, type_id=0x27, size=8)).import_wh == 10 ** 15  # uint64
    assert "'no value' marker" in error_of(_zcl_total((1 << 64) - 1, type_id=0x27, size=8))
    assert decode(_zcl_total((1 << 48) - 2)).import_wh == (1 << 48) - 2  # one below: a value
    assert decode(_zcl_total(1234, type_id=0x23, size=4)).import_wh == 1234  # uint32


def test_v2_energy_with_any_divisor_and_the_meter_clock():
    for div, want in ((1000, 123456), (1, 123456000), (7, 123456 * 1000 // 7), (10000, 12345)):
        r = decode(v2_payload(123456, 1500, divisor=div, meter_ms=0xFEDCBA98))
        assert r.net_wh == want and (r.net_hi, r.net_lo) == (want // 10 ** 9, want % 10 ** 9), div
        assert r.meter_ms == 0xFEDCBA98
