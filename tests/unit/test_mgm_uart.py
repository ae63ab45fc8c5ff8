# The MGM111 link's byte level: requests and the streaming frame parser.
# Plain asserts only: runs under CPython (pytest) and MicroPython (tests/unit_runner.py).
import heap_probe
import mgm_uart
from mgm_payloads import frame, mac_payload, v2_payload, zcl_payload
from mgm_uart import (CMD_ERROR, CMD_INSTALL_CODE, CMD_JOIN, CMD_MAC, CMD_READING, CMD_VERSION,
                      FRAME_MAX, LINE_MAX, FrameParser, request)

MAC = frame(CMD_MAC, mac_payload("88:77:66:55:44:33:22:11"))
VER = frame(CMD_VERSION, b"\x08")
ZCL = frame(CMD_READING, zcl_payload(7, 1000000, 12345, 1, 1000, -250))
V2 = frame(CMD_READING, v2_payload(123456, 1500))


class Rec:
    """Collects what a parser hands out (payloads copied: the views are only valid in the call)."""

    def __init__(self):
        self.frames = []
        self.logs = []
        self.p = FrameParser(self.on_frame, self.on_log)

    def on_frame(self, cmd, payload):
        assert isinstance(payload, memoryview)
        self.frames.append((cmd, bytes(payload)))

    def on_log(self, buf, start, end):
        # The line is handed out in the parser's own buffer (no str per line): copy it to keep it.
        assert buf is self.p.line and 0 <= start < end <= LINE_MAX
        self.logs.append(str(bytes(buf[start:end]), "ascii"))

    def feed(self, data, step=None):
        if step is None:
            self.p.feed(data)
        else:
            for i in range(0, len(data), step):
                self.p.feed(data[i:i + step])
        return self


def parsed(fr):
    """The (cmd, payload) a good frame must come out as."""
    return (fr[2], fr[4:-1])


def test_requests_are_the_three_documented_bytes_and_built_once():
    assert request(CMD_READING) == b"$r\r"
    assert request(CMD_JOIN) == b"$j\r"
    assert request(CMD_MAC) == b"$m\r"
    assert request(CMD_INSTALL_CODE) == b"$i\r"
    assert request(CMD_VERSION) == b"$f\r"
    assert request(CMD_READING) is request(CMD_READING)
    assert mgm_uart.loglevel_request(20) == b"loglevel 20\r"


def test_protocol_md_mac_example_frame():
    r = Rec().feed(bytes.fromhex("24016D0811223344556677880D"))
    assert r.frames == [(CMD_MAC, bytes.fromhex("1122334455667788"))]
    assert r.p.frames == 1 and r.p.garbage_bytes == 0


def test_one_byte_at_a_time_gives_the_same_frames():
    data = MAC + VER + ZCL + V2
    r = Rec().feed(data, step=1)
    assert r.frames == [parsed(MAC), parsed(VER), parsed(ZCL), parsed(V2)]
    assert r.p.garbage_bytes == 0 and r.p.bad_terminator == 0


def test_4kb_in_one_feed():
    data = b""
    expected = []
    while len(data) + len(V2) + len(ZCL) <= 4096:
        data += V2 + ZCL
        expected += [parsed(V2), parsed(ZCL)]
    data += b"\x00" * (4096 - len(data))
    r = Rec().feed(data)
    assert len(data) == 4096
    assert r.frames == expected
    assert r.p.garbage_bytes == 4096 - len(expected) // 2 * (len(V2) + len(ZCL))


def test_memoryview_and_bytearray_chunks_are_accepted():
    buf = bytearray(ZCL + MAC)
    r = Rec()
    r.p.feed(memoryview(buf)[:10])
    r.p.feed(memoryview(buf)[10:])
    r.p.feed(bytearray(VER))
    assert r.frames == [parsed(ZCL), parsed(MAC), parsed(VER)]


def test_a_reused_read_buffer_is_parsed_only_up_to_the_count():
    # The link reads into one buffer and passes the byte count: stale bytes behind it from an
    # earlier, longer read must not be parsed again.
    buf = bytearray(128)
    r = Rec()
    buf[:len(ZCL)] = ZCL
    r.p.feed(buf, len(ZCL))
    buf[:len(VER)] = VER  # shorter than ZCL: the rest of buf still holds ZCL's tail
    r.p.feed(buf, len(VER))
    r.p.feed(buf, 0)
    assert r.frames == [parsed(ZCL), parsed(VER)]
    assert r.p.garbage_bytes == 0


def test_mgm_log_lines_are_handed_out_as_text():
    data = b"MGM boot ok\r\n" + VER + b"rssi -71\n" + b"  padded  \r\n\r\n" + MAC
    r = Rec().feed(data, step=3)
    assert r.logs == ["MGM boot ok", "rssi -71", "padded"]
    assert r.frames == [parsed(VER), parsed(MAC)]
    assert r.p.garbage_bytes == 0


def test_overlong_log_line_is_cut_and_the_parser_carries_on():
    r = Rec().feed(b"x" * (LINE_MAX * 3) + b"\r\n" + b"next\r\n" + VER)
    assert r.logs == ["x" * LINE_MAX, "next"]
    assert r.frames == [parsed(VER)]


def test_dollar_in_log_text_stays_text():
    r = Rec().feed(b"price $5 and $\r\n" + VER, step=1)
    assert r.logs == ["price $5 and $"]
    assert r.frames == [parsed(VER)]


def test_dollar_and_frame_bytes_inside_a_payload_do_not_break_the_frame():
    payload = b"$\x01r\x02$$\r\r$" + bytes(range(40))
    fr = frame(CMD_READING, payload)
    r = Rec().feed(fr + VER, step=1)
    assert r.frames == [(CMD_READING, payload), parsed(VER)]


def test_wrong_terminator_immediately_followed_by_a_good_frame():
    bad = ZCL[:-1] + b"\n"
    r = Rec().feed(bad + MAC)
    assert r.frames == [parsed(MAC)]
    assert r.p.bad_terminator == 1
    # the same one byte at a time
    r = Rec().feed(bad + MAC, step=1)
    assert r.frames == [parsed(MAC)]


def test_good_frame_swallowed_by_a_missing_terminator_is_recovered():
    # A frame that lost its last byte runs into the next frame: the held bytes are rescanned.
    r = Rec().feed(VER[:-1] + MAC + ZCL, step=1)
    assert r.frames == [parsed(MAC), parsed(ZCL)]
    assert r.p.bad_terminator == 1


def test_length_byte_that_lies_long_gives_back_the_next_frame_when_the_line_goes_quiet():
    liar = b"$\x01r\xc8" + b"\x00" * 10 + b"\r"  # says 200 bytes, 10 follow
    r = Rec().feed(liar + MAC)
    assert r.frames == []  # could still be the liar's payload...
    r.p.idle()  # ...until the line goes quiet: then it was not
    assert r.frames == [parsed(MAC)]
    assert r.p.truncated == 1


def test_length_byte_that_lies_short():
    liar = b"$\x01r\x02" + b"\x00" * 10 + b"\r"  # says 2 bytes, 10 follow
    r = Rec().feed(liar + ZCL, step=7)
    assert r.frames == [parsed(ZCL)]
    assert r.p.bad_terminator == 1
    assert r.p.resyncs == 1


def test_truncated_frame_then_silence_then_good_frame():
    r = Rec().feed(ZCL[:20])
    r.p.idle()
    r.feed(V2)
    assert r.frames == [parsed(V2)]
    assert r.p.truncated == 1
    assert r.p.garbage_bytes > 0


def test_idle_with_nothing_pending_changes_nothing():
    r = Rec().feed(VER)
    r.p.idle()
    r.p.idle()
    assert r.frames == [parsed(VER)] and r.p.truncated == 0 and r.p.garbage_bytes == 0


def test_duplicates_and_error_messages_are_all_delivered():
    err = frame(CMD_ERROR, b"\x05")
    r = Rec().feed(ZCL + ZCL + err + V2)
    assert r.frames == [parsed(ZCL), parsed(ZCL), (CMD_ERROR, b"\x05"), parsed(V2)]


def test_garbage_is_counted_and_memory_stays_bounded():
    r = Rec()
    buf, line = r.p.buf, r.p.line
    x = 12345
    for _ in range(40):
        chunk = bytearray(256)
        for i in range(256):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            chunk[i] = (x >> 16) & 0xFF
        r.p.feed(chunk)
        assert r.p.buf is buf and len(buf) == FRAME_MAX and r.p.n <= FRAME_MAX
        assert r.p.line is line and len(line) == LINE_MAX and r.p.line_n <= LINE_MAX
    r.p.idle()
    r.feed(MAC)
    assert r.frames[-1] == parsed(MAC)
    assert r.p.garbage_bytes > 1000


def test_frames_of_every_length_including_empty_and_255():
    data = b""
    expected = []
    for n in (0, 1, 36, 254, 255):
        payload = bytes((i * 7 + n) & 0xFF for i in range(n))
        data += frame(0x77, payload)
        expected.append((0x77, payload))
    r = Rec().feed(data, step=5)
    assert r.frames == expected


def test_reset_forgets_a_pending_frame_and_zeroes_counters():
    r = Rec().feed(b"\xff" + ZCL[:30])
    r.p.reset()
    assert r.p.n == 0 and r.p.garbage_bytes == 0 and r.p.frames == 0
    r.feed(VER)
    assert r.frames == [parsed(VER)]


def test_no_allocation_per_frame():
    # The claim the firmware relies on: steady-state parsing allocates nothing (MicroPython only;
    # CPython has no gc.mem_alloc).
    if not heap_probe.MEASURABLE:
        return
    count = [0]

    def on_frame(cmd, payload):
        count[0] += 1

    p = FrameParser(on_frame)
    data = ZCL + V2 + b"\x00\xff"  # (log lines do allocate: the str handed out)
    p.feed(data)  # the first frame of each length makes its payload view, once
    p.feed(data)
    grown = heap_probe.allocated(lambda: p.feed(data), 50)
    assert count[0] == 104
    assert grown < 200, "parser allocated %d bytes for 100 frames" % grown


def test_printable_remains_of_a_broken_frame_are_not_log_lines():
    r = Rec().feed(b"$\x01r\x20" + b"AB\x00CD")  # truncated; "CD" is unterminated text
    r.p.idle()
    r.feed(b"real line\r\n" + VER)
    assert r.logs == ["real line"]
    assert r.frames == [parsed(VER)]
    assert r.p.log_lines == 1


def test_lying_length_without_a_pause_loses_none_of_the_frames_it_swallowed():
    liar = b"$\x01r\xc8" + b"\x00" * 10 + b"\r"  # says 200 bytes: swallows MAC, ZCL and part of V2
    r = Rec().feed(liar + MAC + ZCL + V2 + VER, step=11)
    assert r.frames == [parsed(MAC), parsed(ZCL), parsed(V2), parsed(VER)]
    assert r.p.bad_terminator == 1 and r.p.truncated == 0


def test_a_verbose_modules_received_message_line_comes_whole():
    # protocol.md's example line, and one with a 64-byte payload: both fit LINE_MAX.
    from mgm_lines import rx_line
    short = rx_line(0x0702, zcl_payload(0xB7, 318458, None, 1, 1000, 440))
    long = rx_line(0x0702, bytes([0x18, 0x01, 0x01]) + bytes(range(64)))
    assert len(long) <= LINE_MAX
    r = Rec().feed((short + "\r\n" + long + "\r\n").encode() + VER, step=7)
    assert r.logs == [short, long]
    assert r.frames == [parsed(VER)]


def test_a_frame_in_the_middle_of_a_log_line_leaves_the_line_whole():
    # The module may print an answer in the middle of a log line: frame and line both survive,
    # whatever the chunking, and a '$' in the text stays text.
    line = b"T0000ABCD:RX len 5, ep 01, clus 0x0702 ($ 01 price) FC 18 seq 24 cmd 01 payload[00 01 ]"
    for cut in (1, 9, 40, 50, len(line) - 1):
        data = line[:cut] + ZCL + line[cut:] + b"\r\n" + MAC
        for step in (1, 5, 64):
            r = Rec().feed(data, step=step)
            assert r.frames == [parsed(ZCL), parsed(MAC)], (cut, step)
            assert r.logs == [line.decode()], (cut, step, r.logs)
            assert r.p.garbage_bytes == 0


def test_no_allocation_per_log_line():
    # Log lines are handed out in the parser's own buffer: a verbose module's lines (short, long,
    # overlong, cut by frames) cost no heap (MicroPython only; CPython has no gc.mem_alloc).
    if not heap_probe.MEASURABLE:
        return
    count = [0, 0]

    def on_frame(cmd, payload):
        count[0] += 1

    def on_log(buf, start, end):
        count[1] += 1

    p = FrameParser(on_frame, on_log)
    data = (b"-- Got Meter Rsp, len=37\r\n" + b"x" * 250 + b"\r\n" + b"y" * (LINE_MAX + 40) + b"\r\n"
            + b"half a line " + ZCL + b"and its rest\r\n" + b"$ 01 in text\r\n")
    p.feed(data)
    p.feed(data)
    grown = heap_probe.allocated(lambda: p.feed(data), 50)
    assert count == [52, 52 * 5]
    assert grown == 0, "parser allocated %d bytes for 250 log lines" % grown


def test_only_the_documented_commands_are_allowed_on_the_wire():
    for ok in (b"$r\r", b"$j\r", b"$m\r", b"$i\r", b"$f\r", b"\r", b"loglevel 10\r",
               b"loglevel 20\r", bytearray(b"$r\r"), mgm_uart.loglevel_request(20)):
        assert mgm_uart.allowed(ok), ok
    for bad in (b"$d\r", b"leave\r", b"reset\r", b"printKeys\r", b"loglevel 30\r", b"$r",
                b"$r\r$d\r", b"loglevel 20", b"", b"\r\r", b"keys print\r", request(0x64)):
        assert not mgm_uart.allowed(bad), bad
