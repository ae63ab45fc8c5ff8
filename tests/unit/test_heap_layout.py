# What the heap budget (issue 10) relies on, checked on the code itself: code that is rarely needed
# is in memory only while it is, and a large payload goes out in pieces, whole or not at all.
# Plain asserts only: runs under CPython (pytest) and MicroPython (tests/unit_runner.py).
import sys
import time

if not hasattr(time, "ticks_ms"):  # CPython: the few MicroPython names the firmware uses
    time.ticks_ms = lambda: int(time.time() * 1000)
    time.ticks_diff = lambda a, b: a - b
    time.ticks_add = lambda a, b: a + b

import decoders  # noqa: E402
import meter  # noqa: E402
import mqtt  # noqa: E402
from mgm_lines import rx_line  # noqa: E402
from mgm_link import Link  # noqa: E402
from mgm_payloads import v2_payload, zcl_payload  # noqa: E402


class Uart:
    def __init__(self):
        self.written = []

    def readinto(self, buf):
        return 0

    def write(self, data):
        self.written.append(bytes(data))

    def reinit(self):
        pass


def session(mgm_log):
    uart = Uart()
    m = meter.MeterSession(lambda f, lg: Link(uart, f, lg), lambda r, p: None, lambda s: None,
                           lambda p, msg: None, 30, 0, 1, mgm_log=mgm_log)
    return m, uart


def test_mgm_log_mode_code_is_loaded_only_while_the_mode_is_on():
    sys.modules.pop("meter_log", None)
    m, uart = session(False)
    line = (rx_line(0x0702, bytes([0x18, 1, 1, 0, 0, 0, 0x25, 1, 0, 0, 0, 0, 0])) + "\r\n").encode()
    m.link.parser.feed(line + b"[I] zb: poll 0x0702 ep 1\r\n")
    # Off: the received-message line only asks the module to be quiet, the other text is counted.
    assert "meter_log" not in sys.modules
    assert m.log_text == "off" and m.mgm_lines == 1 and m._level_due
    m.set_mgm_log(True)
    assert "meter_log" in sys.modules and m.log_text.startswith("on")
    m.link.parser.feed(line)
    assert m.rx_lines == 1
    m.set_mgm_log(False)
    assert "meter_log" not in sys.modules and "decoders.mgm_log" not in sys.modules
    assert m.log_text == "off"
    m2, _ = session(True)
    assert "meter_log" in sys.modules and m2.log_text.startswith("on")
    m2.set_mgm_log(False)


def wire():
    w = mqtt._Wire()

    class Sock:
        def close(self):
            pass
    w.attach(Sock())
    return w


def test_a_payload_in_pieces_is_written_whole_as_utf8():
    w = wire()
    p = mqtt.Parts(['{"name":"', "Z\u00e4hler", '"', b",1}"])
    assert len(p) == len('{"name":"Z\u00e4hler",1}'.encode())
    assert w.write(p) == len(p)
    assert bytes(w.obuf[w.o0:w.o1]) == '{"name":"Z\u00e4hler",1}'.encode()


def test_a_payload_in_pieces_that_does_not_fit_is_not_written_at_all():
    w = wire()
    w.write(b"x" * (len(w.obuf) - 10))
    before = w.o1
    try:
        w.write(mqtt.Parts(["abcdef", "ghijkl"]))
    except OSError as e:
        assert "output buffer is full" in str(e)
    else:
        raise AssertionError("12 bytes went into 10 bytes of room")
    assert w.o1 == before  # nothing of it: never half a message on the wire



def _fresh(*names):
    for n in names:
        sys.modules.pop(n, None)


def test_the_mqtt_client_library_is_in_memory_only_while_connecting():
    # umqtt.simple writes CONNECT; kept, it would hold ~5 KB of heap for the device's whole life
    # (64-bit port): once connected, mqtt.py encodes its few small packets itself.
    _fresh("mqtt", "mqtt_connect", "umqtt", "umqtt.simple")
    import mqtt as m
    import mqtt_connect
    assert "umqtt.simple" not in sys.modules and "umqtt" not in sys.modules
    cfg = {"mqtt": {"host": "127.0.0.1", "tls": False, "port": 1883, "user": None, "password": None,
                    "keepalive_s": 60}}
    c = m.Mqtt(cfg, "id", "vue_utility/x", lambda t, p, r: None, None)
    mqtt_connect._connect_packet(c, c.wire)
    assert c.wire.o1 > 20  # CONNECT is in the output buffer
    assert "umqtt.simple" not in sys.modules and "umqtt" not in sys.modules
    _fresh("mqtt_connect")


def test_only_the_layout_the_meter_speaks_is_loaded():
    def reset():
        _fresh("decoders.v2", "decoders.zcl")
        decoders._layouts[0] = decoders._layouts[1] = None
        for name in ("v2", "zcl"):
            try:
                delattr(decoders, name)  # the package holds its submodules too
            except (AttributeError, KeyError):  # MicroPython: KeyError
                pass
    reset()
    r = decoders.decode(zcl_payload(3, 12345678, 4567, 1, 1000, 1500))
    assert r.format == "zcl" and "decoders.zcl" in sys.modules and "decoders.v2" not in sys.modules
    reset()
    r = decoders.decode(v2_payload(energy_raw=1234567, power_raw=1500))
    assert r.format == "v2" and "decoders.v2" in sys.modules and "decoders.zcl" not in sys.modules
    # decode() tells the layouts apart without their modules: by the same constants.
    from decoders import v2, zcl
    assert (v2.LENGTH, zcl.FRAME_CONTROL, zcl.READ_ATTRIBUTES_RESPONSE) == (152, 0x18, 0x01)
