# The MQTT 3.1.1 packets mqtt.py and mqtt_connect.py write into the output buffer (no client
# library does it for them), compared byte for byte with the spec's layout built here independently.
# Plain asserts only: runs under CPython (pytest) and MicroPython (tests/unit_runner.py).
import time

if not hasattr(time, "ticks_ms"):  # CPython: the few MicroPython names the firmware uses
    time.ticks_ms = lambda: int(time.time() * 1000)
    time.ticks_diff = lambda a, b: a - b
    time.ticks_add = lambda a, b: a + b

import mqtt  # noqa: E402
import mqtt_connect  # noqa: E402


def utf8(s):
    return s.encode("utf-8") if isinstance(s, str) else s


def varlen(n):
    """The spec's Remaining Length: 7 bits a byte, least significant first."""
    out = []
    while True:
        b = n % 128
        n //= 128
        out.append(b | 128 if n else b)
        if not n:
            return bytes(out)


def field(s):
    s = utf8(s)
    return bytes((len(s) >> 8, len(s) & 255)) + s


def packet(first, body):
    return bytes((first,)) + varlen(len(body)) + body


class Sock:
    """Takes every byte sent; nothing to read."""

    def __init__(self):
        self.sent = []

    def write(self, b):
        self.sent.append(bytes(b))
        return len(b)

    def readinto(self, buf):
        return None

    def close(self):
        pass


def client(user=None, password=None, base="vue_utility/sim0001", client_id="vue-utility-sim0001",
           keepalive=60):
    cfg = {"mqtt": {"host": "h", "port": 1883, "tls": False, "user": user, "password": password,
                    "keepalive_s": keepalive}}
    m = mqtt.Mqtt(cfg, client_id, base, lambda t, p, r: None, None)
    m.wire.attach(Sock())
    return m


def written(m):
    """What was sent and what waits in the output buffer, in order; then forgotten."""
    w = m.wire
    out = b"".join(w.s.sent) + bytes(w.obuf[w.o0:w.o1])
    w.o0 = w.o1 = 0
    w.s.sent = []
    return out


def test_connect_without_a_login_has_a_retained_last_will_and_the_keepalive():
    m = client(keepalive=600)
    mqtt_connect._connect_packet(m, m.wire)
    body = (field("MQTT") + bytes((4, 0x26, 600 >> 8, 600 & 255)) + field("vue-utility-sim0001")
            + field("vue_utility/sim0001/status") + field("offline"))
    assert written(m) == packet(0x10, body)


def test_connect_with_a_login_sends_user_and_password_as_utf8():
    for user, pw in (("vue", "s3cret"), ("Z\u00e4hler", "p\u00e4ss w\u00f6rd"), ("u", None), ("u", "")):
        m = client(user, pw, client_id="id-\u00e9")
        mqtt_connect._connect_packet(m, m.wire)
        body = (field("MQTT") + bytes((4, 0xE6, 0, 60)) + field("id-\u00e9") + field("vue_utility/sim0001/status")
                + field("offline") + field(user) + field(pw or ""))
        assert written(m) == packet(0x10, body), (user, pw)


def test_publish_sizes_in_bytes_and_sets_the_retain_flag():
    m = client()
    m.session = True
    # Remaining lengths of one and two bytes (the buffer holds 1.5 KB), UTF-8 topics and payloads,
    # str, bytes and a payload in pieces.
    for topic, payload, retain in (("t", "1", False), ("vue/\u00e4", "Z\u00e4hler \u20ac", True),
                                   ("a/b", "x" * 121, False), ("a/b", "y" * 200, True),
                                   ("a/c", b"\x00\xff", False)):
        m.publish(topic, payload, retain)
        m.flush(1)
        assert written(m) == packet(0x31 if retain else 0x30, field(topic) + utf8(payload)), (topic, retain)
    m.publish_parts("t/p", ['{"a":', "\u00e4" * 100, "}"], True)
    m.flush(1)
    assert written(m) == packet(0x31, field("t/p") + utf8('{"a":' + "\u00e4" * 100 + "}"))


def test_a_topic_queued_again_goes_out_once_with_its_newest_payload_and_retain_flag():
    m = client()
    m.session = True
    # Queued while disconnected: retained, then not, then retained again...; others in between,
    # and more topics than the outbox holds (48), so the oldest ones are dropped unsent.
    seq = [("a", "1", True), ("b", "2", False), ("a", "3", False), ("c", "4", True), ("b", "5", True),
           ("a", "6", True), ("c", "7", False)]
    seq += [("x/%d" % k, str(k), k % 2 == 0) for k in range(60)] + [("b", "9", False)]
    order = []  # topics by their last publish, oldest first: the outbox's order
    newest = {}
    for topic, payload, retain in seq:
        m.publish(topic, payload, retain)
        newest[topic] = (payload, retain)
        if topic in order:
            order.remove(topic)
        order.append(topic)
    cap = len(m.outbox)
    assert 10 < cap < len(order)
    m.flush(100)
    got = written(m)
    assert got == b"".join(packet(0x31 if newest[t][1] else 0x30, field(t) + utf8(newest[t][0]))
                           for t in order[-cap:])
    # Sent or dropped: nothing about them is kept (their topic strings are free), and a topic
    # queued again without the flag is plain again.
    assert not m.outbox and not m._plain
    m.publish("a", "8")
    m.flush(1)
    assert written(m) == packet(0x30, field("a") + utf8("8"))


def test_subscribe_asks_qos_0_and_unsubscribe_numbers_its_packets():
    m = client()
    m.subscribe("vue/cmd/+")
    m.unsubscribe("vue/energy/+")
    assert written(m) == (packet(0x82, bytes((0, 1)) + field("vue/cmd/+") + b"\x00")
                          + packet(0xA2, bytes((0, 2)) + field("vue/energy/+")))
    assert sorted(m._acks) == [1, 2]


def test_a_qos_1_message_is_acknowledged_with_its_packet_id_and_delivered():
    got = []
    m = client()
    m.on_message = lambda t, p, r: got.append((t, bytes(p), r))
    w = m.wire
    body = field("vue/cmd/rejoin") + bytes((0x12, 0x34)) + b"PRESS"
    pkt = packet(0x33, body)  # QoS 1, retained
    w.ibuf[0:len(pkt)] = pkt
    w.i1 = len(pkt)
    m._input()
    assert got == [("vue/cmd/rejoin", b"PRESS", True)]
    assert written(m) == bytes((0x40, 2, 0x12, 0x34))


def test_shutdown_sends_offline_then_disconnect():
    m = client()
    m.session = True
    s = m.wire.s
    m.publish("vue_utility/sim0001/power", "5")
    m.disconnect()
    assert b"".join(s.sent) == (packet(0x30, field("vue_utility/sim0001/power") + b"5")
                              + packet(0x31, field("vue_utility/sim0001/status") + b"offline") + b"\xe0\x00")
    assert not m.session and m.wire.s is None
