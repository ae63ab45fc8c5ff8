"""Property-based tests (hypothesis, CPython) of the frame parser and the decoders.

The stream model follows the wire: good frames (any payload, `$` included), MGM log lines (of any
length, `$` included, with frames printed in the middle of them; a verbose module's received-message
lines come back as their exact ZCL bytes),
binary garbage, duplicates, unsolicited `e` frames, frames with a wrong terminator (followed by
anything), and truncated or lying-length frames, which on the wire are followed by silence
(the link then calls idle()). Junk is built so that it cannot itself contain a well-formed frame
(no `$` in junk bodies), otherwise "every valid frame exactly once" would be ill-defined.
"""
import os
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in ("sim", "firmware"):
    if os.path.join(ROOT, _p) not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, _p))

import decoders  # noqa: E402
from decoders import mgm_log  # noqa: E402
from mgm_lines import rx_line  # noqa: E402
from mgm_payloads import frame, v2_payload, zcl_payload  # noqa: E402
from mgm_uart import FRAME_MAX, LINE_MAX, FrameParser  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NO_DOLLAR = [b for b in range(256) if b != 0x24]
JUNK_BODY = [b for b in range(256) if b not in (0x24, 0x0D)]

cmds = st.sampled_from([0x72, 0x6A, 0x6D, 0x69, 0x66, 0x65, 0x41])
payloads = st.one_of(
    st.binary(max_size=255),
    st.binary(max_size=40).map(lambda b: b"$\x01r" + b + b"$\r"),  # frame-like bytes inside
    st.builds(zcl_payload, st.integers(0, 255), st.integers(0, 2**40), st.none(),
              st.just(1), st.just(1000), st.integers(-2**23 + 1, 2**23 - 1)),
    st.builds(v2_payload, st.integers(1, 0x3FFFFF), st.integers(-5000, 5000)),
)
junk_bytes = st.lists(st.sampled_from(JUNK_BODY), max_size=60).map(bytes)
junk_cmd = st.sampled_from([b for b in range(256) if b != 0x24])


@st.composite
def good(draw):
    return ("good", frame(draw(cmds), draw(payloads)))


@st.composite
def log_line(draw):
    text = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=150))
    return ("log", text.encode() + draw(st.sampled_from([b"\r\n", b"\n", b"\r"])))


@st.composite
def garbage(draw):
    return ("junk", bytes(draw(st.lists(st.sampled_from(NO_DOLLAR), min_size=1, max_size=80))))


@st.composite
def bad_terminator(draw):
    body = draw(junk_bytes)
    end = draw(st.sampled_from([b for b in range(256) if b not in (0x0D, 0x24)]))
    hdr = bytes((0x24, 0x01, draw(junk_cmd), len(body)))
    return ("junk", hdr + body + bytes((end,)))


@st.composite
def truncated(draw):
    body = draw(junk_bytes)
    whole = bytes((0x24, 0x01, draw(junk_cmd), len(body))) + body + b"\r"
    return ("gap", whole[:draw(st.integers(1, len(whole) - 1))])


@st.composite
def lying_length(draw):
    body = draw(junk_bytes)
    claim = draw(st.integers(0, 255).filter(lambda n: n != len(body) and n != 0x24))
    return ("gap", bytes((0x24, 0x01, draw(junk_cmd), claim)) + body + b"\r")


items = st.one_of(good(), good(), log_line(), garbage(), bad_terminator(), truncated(),
                  lying_length())


def check_bounded(p, buf, line):
    assert p.buf is buf and len(buf) == FRAME_MAX and 0 <= p.n <= FRAME_MAX
    assert p.line is line and len(line) == LINE_MAX and 0 <= p.line_n <= LINE_MAX
    assert len(p._views) <= 8  # views kept for good: the few lengths the MGM uses, never one per noise length


@SETTINGS
@given(st.lists(items, max_size=25), st.data())
def test_every_valid_frame_exactly_once_in_order(stream, data):
    got = []
    logs = []
    p = FrameParser(lambda c, pl: got.append((c, bytes(pl))),
                    lambda b, s, e: logs.append(str(bytes(b[s:e]), "ascii")))
    buf, line = p.buf, p.line
    expected = []
    for kind, b in stream:
        times = 1
        if kind == "good":
            # A reading answer sometimes arrives twice: both copies are frames.
            times = 2 if data.draw(st.booleans(), label="duplicate") else 1
            expected += [(b[2], b[4:-1])] * times
        for chunk in (b,) * times:
            i = 0
            while i < len(chunk):
                k = data.draw(st.integers(1, 300), label="chunk")
                p.feed(chunk[i:i + k])
                check_bounded(p, buf, line)
                i += k
        # Silence after a broken transmission; now and then also after anything else.
        if kind == "gap" or data.draw(st.integers(0, 5), label="idle") == 0:
            p.idle()
            check_bounded(p, buf, line)
    p.idle()
    assert got == expected
    assert p.frames == len(expected)
    for text in logs:
        assert isinstance(text, str) and 0 < len(text) <= LINE_MAX
        assert text == text.strip()


@SETTINGS
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=600), st.booleans()), max_size=20))
def test_any_bytes_never_raise_and_memory_stays_bounded(chunks):
    p = FrameParser(lambda c, pl: bytes(pl), lambda b, s, e: None)
    buf, line = p.buf, p.line
    for b, quiet in chunks:
        p.feed(b)
        check_bounded(p, buf, line)
        if quiet:
            p.idle()
            assert p.n == 0
    # And it still works afterwards.
    got = []
    p.on_frame = lambda c, pl: got.append(bytes(pl))
    p.idle()
    p.feed(frame(0x66, b"\x08"))
    assert got == [b"\x08"]


@SETTINGS
@given(st.binary(max_size=300))
def test_decoders_only_raise_decode_error(b):
    for fn in (decoders.decode, decoders.decode_mac, decoders.decode_install_code,
               decoders.decode_version):
        try:
            fn(b)
        except decoders.DecodeError:
            pass


@SETTINGS
@given(st.one_of(
    st.builds(zcl_payload, st.integers(0, 255), st.none() | st.integers(0, 2**48 - 2),
              st.none() | st.integers(0, 2**48 - 2), st.none() | st.integers(0, 12),
              st.none() | st.integers(0, 2**24 - 2), st.none() | st.integers(-2**23 + 1, 2**23 - 1)),
    st.builds(v2_payload, st.none() | st.integers(0, 2**32 - 1),
              st.none() | st.integers(-0x3FFFFF, 0x7FFFFF).filter(lambda v: v != -0x800000),
              st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2**32 - 1),
              st.sampled_from(["ones", "signmag"]))),
    st.lists(st.tuples(st.integers(0, 151), st.integers(0, 255)), max_size=4),
    st.integers(0, 160))
def test_mutated_readings_only_raise_decode_error(payload, flips, cut):
    p = bytearray(payload)
    for pos, val in flips:
        if pos < len(p):
            p[pos] = val
    for candidate in (bytes(p), bytes(p[:cut])):
        try:
            r = decoders.decode(candidate)
        except decoders.DecodeError as e:
            assert str(e)
            continue
        assert r.format in ("v2", "zcl")
        assert 1 <= r.multiplier <= 10 and r.divisor > 0


@SETTINGS
@given(st.integers(0, 255), st.none() | st.integers(0, 2**47), st.none() | st.integers(0, 2**47),
       st.integers(1, 10), st.sampled_from([1, 10, 100, 1000, 3, 7, 10000]),
       st.none() | st.integers(-2**23 + 1, 2**23 - 1))
def test_zcl_round_trip(seq, imp, exp, mult, div, dem):
    p = zcl_payload(seq, imp, exp, mult, div, dem)
    if imp is None and exp is None and dem is None:
        try:
            decoders.decode(p)
        except decoders.DecodeError as e:
            assert "no usable value" in str(e)
            return
        raise AssertionError("decoded a reading without values")
    r = decoders.decode(p)

    def scaled(v):
        if v is None:
            return None
        q = abs(v) * mult * 1000 // div
        if q // decoders.GIGA > decoders.MAX_HI:  # over ~1.07 * 10**18 Wh (no meter): clipped, see scale_total
            q = decoders.MAX_HI * decoders.GIGA + q % decoders.GIGA
        return -q if v < 0 else q
    assert (r.seq, r.import_wh, r.export_wh, r.watts) == (seq, scaled(imp), scaled(exp), scaled(dem))


@SETTINGS
@given(st.integers(1, 0x3FFFFF), st.integers(-0x3FFFFF, 0x7FFFFF), st.integers(1, 10),
       st.sampled_from(["ones", "signmag"]), st.integers(0, 2**32 - 1))
def test_v2_round_trip(energy, power, mult, neg, ms):
    r = decoders.decode(v2_payload(energy, power, mult, 1000, ms, neg))
    assert (r.net_wh, r.watts, r.multiplier, r.meter_ms) == (energy * mult, power * mult, mult, ms)


TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"), max_size=2 * LINE_MAX + 20)
ENDS = st.sampled_from([b"\r\n", b"\n", b"\r"])


def insert_frames(text, frames, draw):
    """text with the frames printed at drawn positions inside it (in order, never inside each other)."""
    cuts = sorted(draw(st.integers(0, len(text)), label="frame position") for _ in frames)
    out, prev = b"", 0
    for k, fr in zip(cuts, frames):
        out += text[prev:k] + fr
        prev = k
    return out + text[prev:]


def feed_chunked(p, data, draw):
    i = 0
    while i < len(data):
        k = draw(st.integers(1, 300), label="chunk")
        p.feed(data[i:i + k])
        i += k


@SETTINGS
@given(st.lists(st.tuples(TEXT, ENDS, st.lists(good(), max_size=2)), max_size=12), st.data())
def test_log_lines_of_any_length_with_frames_printed_inside_them(lines, data):
    """Every log line comes out once, whole up to LINE_MAX (cut there, its tail dropped), however
    many frames the module printed in the middle of it, and every frame comes out exactly once."""
    got, logs = [], []
    p = FrameParser(lambda c, pl: got.append((c, bytes(pl))),
                    lambda b, s, e: logs.append(bytes(b[s:e]).decode("ascii")))
    buf, line = p.buf, p.line
    stream, want_frames, want_logs = b"", [], []
    for text, end, frames in lines:
        stream += insert_frames(text.encode() + end, [fr for _, fr in frames], data.draw)
        want_frames += [(fr[2], fr[4:-1]) for _, fr in frames]
        kept = text[:LINE_MAX].strip(" \t")
        if kept:
            want_logs.append(kept)
    feed_chunked(p, stream, data.draw)
    check_bounded(p, buf, line)
    p.idle()
    assert logs == want_logs
    assert got == want_frames
    assert p.garbage_bytes == 0 and p.frames == len(want_frames)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(min_size=3, max_size=64),
                          st.lists(good(), max_size=2), st.none() | st.floats(0, 1)),
                min_size=1, max_size=8), st.data())
def test_received_message_lines_give_their_exact_zcl_bytes_or_nothing(lines, data):
    """A verbose module's received-message lines, with frames inside them and some cut short, read
    back through the parser and the decoder: a whole line gives exactly its ZCL bytes, a cut one
    gives none (never half of them)."""
    rx = mgm_log.RxLine(96)
    got, frames_got, errors = [], [], []

    def on_log(b, s, e):
        try:
            n = mgm_log.parse(b, s, e, rx)
        except decoders.DecodeError as err:
            errors.append(str(err))
            return
        if n >= 0:
            got.append((rx.cluster, bytes(rx.zcl[:n])))

    p = FrameParser(lambda c, pl: frames_got.append(bytes(pl)), on_log)
    stream, want, nframes = b"", [], 0
    for cluster, z, frames, cut in lines:
        text = rx_line(cluster, z, ts=cluster * 7919).encode()
        whole = len(text)
        if cut is not None:
            text = text[:int(whole * cut)]  # the module lost the rest of the line (or none)
        if len(text) == whole <= LINE_MAX:
            want.append((cluster, z))
        stream += insert_frames(text + b"\r\n", [fr for _, fr in frames], data.draw)
        stream += b"-- Got Meter Rsp, len=%d\r\n" % len(z)
        nframes += len(frames)
    feed_chunked(p, stream, data.draw)
    p.idle()
    assert got == want
    assert len(frames_got) == nframes
    assert all("cut" in e or "garbled" in e or "says len" in e for e in errors), errors


PROTOCOL_MD_ALLOWED = {b"$r\r", b"$j\r", b"$m\r", b"$i\r", b"$f\r", b"\r", b"loglevel 10\r", b"loglevel 20\r"}


@SETTINGS
@given(st.one_of(st.binary(max_size=20),
                 st.sampled_from(sorted(PROTOCOL_MD_ALLOWED)).flatmap(
                     lambda ok: st.tuples(st.just(ok), st.binary(max_size=3), st.booleans()).map(
                         lambda t: t[1] + t[0] if t[2] else t[0] + t[1])),
                 st.sampled_from([b"leave\r", b"reset\r", b"printKeys\r", b"$d\r", b"keys print\r"])))
def test_only_what_protocol_md_allows_may_be_written(data):
    """The check behind Link.write, the firmware's one way to the module: exactly the five requests,
    a lone CR and loglevel 10/20 pass; anything else (leave, reset, printKeys, $d, a valid command
    with anything around it) does not."""
    import mgm_uart
    assert mgm_uart.allowed(data) == (data in PROTOCOL_MD_ALLOWED)
    assert mgm_uart.allowed(bytearray(data)) == (data in PROTOCOL_MD_ALLOWED)
