# MQTT over micropython-lib's umqtt.simple: reconnect with backoff as a normal path, last will,
# a bounded outbox (latest value per topic, so an outage of any length costs no memory), commands in.
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio
import select
import socket
from collections import OrderedDict

import log
import umqtt.simple as _umqtt

BACKOFF_MS = (1000, 2000, 5000, 10000, 30000, 60000)
CONNECT_TIMEOUT_MS = 5000
OUTBOX_MAX = 48  # distinct topics waiting; our own topic set is far smaller


class _Sock:
    """Wraps the connected socket for umqtt: connect() is a no-op (we connected it without
    blocking), and reads are timestamped so a dead broker is noticed by missing PINGRESPs."""

    def __init__(self, s):
        self.s = s
        self.last_rx = time.ticks_ms()

    def connect(self, addr):
        pass

    def read(self, n):
        d = self.s.read(n)
        if d:
            self.last_rx = time.ticks_ms()
        return d

    def write(self, data, n=None):
        return self.s.write(data) if n is None else self.s.write(memoryview(data)[:n])

    def setblocking(self, flag):
        self.s.setblocking(flag)
        if flag and hasattr(self.s, "settimeout"):
            self.s.settimeout(2)  # a broker that stalls mid-packet must not hang the loop forever

    def close(self):
        self.s.close()


class _Preconnected:
    """Stands in for umqtt.simple's `socket` module during connect(): hands it our socket."""

    def __init__(self, sock):
        self.sock = sock

    def socket(self, *args):
        return self.sock

    def getaddrinfo(self, host, port):
        return [(None, None, None, None, None)]


class Client(_umqtt.MQTTClient):
    def unsubscribe(self, topic):
        # UNSUBSCRIBE is not in umqtt.simple 1.3.4. Wait for the UNSUBACK as subscribe() waits for
        # its SUBACK, so its bytes are not mistaken for the next packet.
        self.pid = (self.pid + 1) & 0xFFFF or 1
        self.sock.write(bytes((0xA2, 2 + 2 + len(topic), self.pid >> 8, self.pid & 0xFF)))
        self._send_str(topic)
        while self.wait_msg() != 0xB0:
            pass
        self.sock.read(3)


class Mqtt:
    def __init__(self, cfg, client_id, base, on_message, on_connect):
        m = cfg["mqtt"]
        self.host = m["host"]
        self.tls = m["tls"]
        self.port = m["port"] or (8883 if self.tls else 1883)
        self.user = m["user"]
        self.password = m["password"]
        self.keepalive = m["keepalive_s"]
        self.client_id = client_id
        self.base = base
        self.on_message = on_message
        self.on_connect = on_connect
        self.client = None
        self.connected = False
        self.connects = 0
        self.failures = 0
        self.outbox = OrderedDict()  # topic -> (payload, retain), oldest first
        self.dropped = 0
        self._last_ping = 0

    def publish(self, topic, payload, retain=False):
        box = self.outbox
        if topic in box:
            del box[topic]  # keep only the newest value, and move it to the end
        elif len(box) >= OUTBOX_MAX:
            del box[next(iter(box))]
            self.dropped += 1
        box[topic] = (payload, retain)

    async def _open(self):
        ai = socket.getaddrinfo(self.host, self.port)[0]
        s = socket.socket(ai[0], ai[1], ai[2]) if ai[0] is not None else socket.socket()
        try:
            # umqtt writes a packet in 2-4 pieces: without TCP_NODELAY, Nagle + delayed ACK make
            # each subscribe wait ~40 ms for its SUBACK, blocking the loop.
            s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (lwIP and Linux agree)
        except (OSError, AttributeError):
            pass
        s.setblocking(False)
        try:
            s.connect(ai[-1])
        except OSError as e:
            if e.args[0] not in (115, 119):  # EINPROGRESS (unix, lwIP)
                s.close()
                raise
        p = select.poll()
        p.register(s, select.POLLOUT | select.POLLERR | select.POLLHUP)
        t0 = time.ticks_ms()
        while True:
            ev = p.poll(0)
            if ev:
                if ev[0][1] & (select.POLLERR | select.POLLHUP):
                    s.close()
                    raise OSError("connection refused")
                break
            if time.ticks_diff(time.ticks_ms(), t0) > CONNECT_TIMEOUT_MS:
                s.close()
                raise OSError("timed out")
            await asyncio.sleep_ms(10)
        s.setblocking(True)
        s.settimeout(2)
        if self.tls:
            import ssl
            # The handshake blocks (~1 s on an ESP32): once per connect, within the watchdog's margin.
            s = ssl.wrap_socket(s, server_hostname=self.host)
        return _Sock(s)

    async def _connect(self):
        sock = await self._open()
        c = Client(self.client_id, self.host, self.port, self.user, self.password,
                   keepalive=self.keepalive)
        c.set_callback(self._message)
        c.set_last_will(self.base + "/status", "offline", retain=True)
        real = _umqtt.socket
        _umqtt.socket = _Preconnected(sock)
        try:
            c.connect()  # CONNECT + CONNACK over our socket; the broker answers in milliseconds
        finally:
            _umqtt.socket = real
        self.client = c
        self.sock = sock

    def _message(self, topic, msg):
        try:
            self.on_message(topic.decode(), msg)
        except Exception as e:  # a bad command must never take the connection down
            log.warn("MQTT message on %s not handled: %s" % (topic, e))

    def subscribe(self, topic):
        self.client.subscribe(topic)

    def unsubscribe(self, topic):
        self.client.unsubscribe(topic)

    def _drop(self, why):
        if self.connected:
            log.warn("MQTT connection lost (%s); reconnecting" % why)
        self.connected = False
        if self.client:
            try:
                self.client.sock.close()
            except (OSError, AttributeError):
                pass
        self.client = None

    async def run(self, network_up):
        while True:
            if not network_up():
                self._drop("network down")
                await asyncio.sleep_ms(500)
                continue
            try:
                await self._connect()
            except (OSError, _umqtt.MQTTException, AssertionError, IndexError, TypeError) as e:
                self.failures += 1
                delay = BACKOFF_MS[min(self.failures - 1, len(BACKOFF_MS) - 1)]
                if self.failures in (1, 3) or self.failures % 20 == 0:
                    log.warn("MQTT broker %s:%d not reachable (%s); retrying every %d s" % (
                        self.host, self.port, _reason(e), delay // 1000))
                await asyncio.sleep_ms(delay)
                continue
            self.connected = True
            self.connects += 1
            log.info("MQTT connected to %s:%d" % (self.host, self.port))
            self.failures = 0
            self._last_ping = time.ticks_ms()
            try:
                self.client.publish(self.base + "/status", "online", True)
                await self.on_connect(self)
                await self._serve()
            except (OSError, AssertionError, IndexError, TypeError) as e:
                self._drop(_reason(e))
            await asyncio.sleep_ms(BACKOFF_MS[0])

    async def _serve(self):
        c = self.client
        ka_ms = self.keepalive * 1000
        while True:
            for _ in range(4):  # a message per call; a few per step keeps the step short
                c.check_msg()
            self.flush(2)
            now = time.ticks_ms()
            if time.ticks_diff(now, self._last_ping) > ka_ms // 2:
                c.ping()
                self._last_ping = now
            if time.ticks_diff(now, self.sock.last_rx) > ka_ms + ka_ms // 2:
                raise OSError("no answer from the broker for %d s" % (ka_ms * 3 // 2000))
            await asyncio.sleep_ms(20)

    def flush(self, n):
        """Publish up to n queued messages (a few per loop step keeps each step short)."""
        box = self.outbox
        while n and box and self.client:
            topic = next(iter(box))
            payload, retain = box.pop(topic)
            try:
                self.client.publish(topic, payload, retain)
            except OSError:
                box[topic] = (payload, retain)  # not lost: sent after the reconnect
                raise
            n -= 1


def _reason(e):
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        return {111: "connection refused", 113: "no route to host", 110: "timed out",
                104: "connection reset", 32: "broken pipe", -1: "connection closed"}.get(
                    e.args[0], "error %d" % e.args[0])
    if isinstance(e, _umqtt.MQTTException):
        return {4: "bad user name or password", 5: "not authorised"}.get(
            e.args[0] if e.args else 0, "refused by broker (%s)" % e)
    return str(e) or type(e).__name__
