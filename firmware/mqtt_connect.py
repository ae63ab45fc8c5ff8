# MQTT's connect procedure (mqtt.py): in memory only while not connected; Mqtt.run imports it for
# an attempt and drops it once connected (heap is scarce, and a connected device never needs it).
# Every wait is bounded and non-blocking, as in mqtt.py: TCP connect, TLS handshake, CONNACK.
import gc
import select
import socket
import sys
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

import log
from mqtt import RETRY_MS, _WOULD_BLOCK, _secs

LOGIN_RETRY_MS = (10000, 30000, 60000)  # a refused login: fast retries would not fix it
CONNECT_TIMEOUT_MS = const(5000)  # TCP connect; then TLS handshake + CONNACK


class Refused(Exception):
    """The broker's CONNACK said no: args[0] is its return code."""


async def attempt(mq):
    """One connect attempt -> 0 when connected, else the ms to wait before the next (said in words,
    at the 1st, 3rd and every 20th failure in a row)."""
    try:
        await _connect(mq)
        return 0
    except Refused as e:  # the CONNACK said no
        mq._close()
        delay = _failed(mq, LOGIN_RETRY_MS if e.args[0] in (2, 4, 5) else RETRY_MS)
        if mq.failures in (1, 3) or mq.failures % 20 == 0:
            log.warn("MQTT broker %s:%d %s; retrying every %s s" % (
                mq.host, mq.port, _refusal(mq, e.args[0]), _secs(delay)))
    except (OSError, MemoryError, AssertionError, IndexError, TypeError, ValueError) as e:
        mq._close()
        delay = _failed(mq, RETRY_MS)
        if mq.failures in (1, 3) or mq.failures % 20 == 0:
            log.warn("MQTT broker %s:%d not reachable (%s); retrying every %s s" % (
                mq.host, mq.port, reason(e), _secs(delay)))
    return delay


def _failed(mq, delays):
    mq.failures += 1
    if mq.failures % 3 == 0:
        mq._ai = None  # look the name up again: the broker may have a new address
    return delays[min(mq.failures - 1, len(delays) - 1)]


def _addr(mq):
    if mq._ai is None:
        # Blocks for a host name (DNS); an IP address answers at once. Once per address.
        mq._ai = socket.getaddrinfo(mq.host, mq.port, 0, socket.SOCK_STREAM)[0]
    return mq._ai


async def _connect(mq):
    ai = _addr(mq)
    s = socket.socket(ai[0], ai[1], ai[2])
    w = mq.wire
    w.attach(s)  # from here on, mq._close() closes it whatever happens
    try:
        # A packet goes out whole from our buffer: no Nagle delay for small ones.
        s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (lwIP and Linux agree)
    except (OSError, AttributeError):
        pass
    s.setblocking(False)
    try:
        s.connect(ai[-1])
    except OSError as e:
        if e.args[0] not in _WOULD_BLOCK:
            raise
    p = select.poll()
    p.register(s, select.POLLOUT | select.POLLERR | select.POLLHUP)
    t0 = time.ticks_ms()
    while True:
        ev = p.poll(0)
        if ev:
            if ev[0][1] & (select.POLLERR | select.POLLHUP):
                raise OSError(111)
            break
        if time.ticks_diff(time.ticks_ms(), t0) > CONNECT_TIMEOUT_MS:
            raise OSError("no TCP connection within %d s" % (CONNECT_TIMEOUT_MS // 1000))
        await asyncio.sleep_ms(10)
    p.unregister(s)
    if mq.tls:
        w.s = await _tls(mq, s)
    _connect_packet(mq, w)
    mq.session = True
    mq._acks = {}
    mq._connack = None
    t0 = time.ticks_ms()
    while mq._connack is None:
        try:
            w.send()  # with TLS, the handshake runs inside these non-blocking writes and reads
            mq._input()
        except OSError:
            if mq._connack is None:
                raise
            break  # a refusal, then the broker closed: the refusal is what to report
        if time.ticks_diff(time.ticks_ms(), t0) > CONNECT_TIMEOUT_MS:
            raise OSError("the broker took the TCP connection but did not answer%s within %d s" % (
                " (TLS handshake or CONNACK)" if mq.tls else " (no CONNACK)", CONNECT_TIMEOUT_MS // 1000))
        await asyncio.sleep_ms(10)
    if mq._connack:
        raise Refused(mq._connack)
    mq._ping_at = time.ticks_ms()
    mq._unanswered = None


async def _tls(mq, s):
    """The socket wrapped for TLS. The handshake is not done here: it advances inside our
    non-blocking reads and writes (each mbedTLS step still computes in one go: the key exchange
    and the certificate check cost CPU, not waiting)."""
    import ssl
    if not mq.ca_file:
        if not getattr(mq, "_unchecked_said", False):
            mq._unchecked_said = True  # once per boot: it is a setting, not an event
            log.warn("MQTT over TLS without checking the broker's certificate (mqtt.ca_file is not "
                     "set): encrypted, but anyone on the network path could pose as the broker")
        return ssl.wrap_socket(s, server_hostname=mq.host, do_handshake=False)
    import ca_certs
    try:
        ders = ca_certs.read(mq.ca_file, False)  # checked in full at boot (config.py)
    finally:
        sys.modules.pop("ca_certs", None)
    gc.collect()  # its code and the file's text are garbage now: room for the handshake
    await asyncio.sleep_ms(0)  # the file was one step; parsing the certificates is the next
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Required: a chain to one of these CAs and a certificate for mqtt.host (mbedTLS checks the
    # name given as server_hostname against the certificate's names).
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        while ders:
            ctx.load_verify_locations(cadata=ders.pop(0))  # each block freed once it is parsed
    except ValueError as e:  # mbedTLS's own words: "invalid cert"
        raise ValueError("mqtt.ca_file %s: mbedTLS cannot use this certificate (%s)" % (mq.ca_file, e))
    return ctx.wrap_socket(s, server_hostname=mq.host, do_handshake_on_connect=False)


class _Written(Exception):
    """umqtt.simple has written CONNECT and would now wait for the CONNACK: mqtt.py reads it."""


class _Sock:
    """umqtt.simple's socket module and socket while it writes CONNECT: our output buffer."""

    def __init__(self, w):
        self.w = w

    def socket(self, *args):
        return self

    def getaddrinfo(self, host, port):
        return [(0, 0, 0, "", None)]  # connected already, by _connect

    def connect(self, addr):
        pass

    def write(self, data, n=None):
        return self.w.write(data if n is None else memoryview(data)[:n])

    def read(self, n):
        raise _Written()


def _connect_packet(mq, w):
    """CONNECT into the output buffer, written by umqtt.simple, the project's MQTT client: clean
    session, keepalive, the last will ("offline", retained, on <base>/status), the login when a
    user is set. Only while connecting: once connected, mqtt.py encodes its few small packets
    itself, and umqtt's code (~5 KB of heap) is not kept for the device's whole life."""
    import umqtt.simple as umqtt
    login = mq.user is not None
    c = umqtt.MQTTClient(_b(mq.client_id), mq.host, mq.port, _b(mq.user) if login else None,
                         _b(mq.password or "") if login else None, keepalive=mq.keepalive)
    c.set_last_will(_b(mq.base + "/status"), b"offline", retain=True)
    real = umqtt.socket
    umqtt.socket = _Sock(w)
    try:
        c.connect()
    except _Written:
        pass
    finally:
        umqtt.socket = real
        c = umqtt = None
        sys.modules.pop("umqtt.simple", None)
        sys.modules.pop("umqtt", None)


def _b(s):
    return s.encode() if isinstance(s, str) else s


def _refusal(mq, rc):
    if rc in (4, 5):
        if mq.user is None:
            return "requires a login: set mqtt.user in config.json and mqtt.password in secrets.json"
        return ("refused the login for user %r (bad user name or password, or not allowed): check "
                "mqtt.user in config.json and mqtt.password in secrets.json" % mq.user)
    if rc == 2:
        return "refused our client id %r: set another mqtt.client_id in config.json" % mq.client_id
    if rc == 1:
        return "refused the connection: it does not speak MQTT 3.1.1"
    if rc == 3:
        return "says it is unavailable (CONNACK code 3)"
    return "refused the connection (CONNACK code %d)" % rc


def reason(e):
    """An exception (or words) from the MQTT path, in words."""
    if isinstance(e, str):
        return e
    if isinstance(e, MemoryError):
        return "out of memory"
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        c = e.args[0]
        text = {111: "connection refused", 113: "no route to host", 110: "timed out", 104: "connection reset",
                32: "broken pipe", 103: "connection aborted", -1: "connection closed", 128: "not connected",
                -2: "host name not found", -202: "host name not found", 12: "out of memory"}.get(c)
        if text:
            return text
        if c == -0x2700:  # MBEDTLS_ERR_X509_CERT_VERIFY_FAILED
            return ("its TLS certificate is not trusted (not from mqtt.ca_file's CA, or not for "
                    "mqtt.host)")
        if c < -1:
            return "TLS error -0x%04x" % -c  # mbedTLS codes: negative
        return "error %d" % c
    if isinstance(e, Refused):
        return "refused by the broker (%s)" % e
    m = "; ".join([x.strip() for x in str(e).split("\n") if x.strip()])  # mbedTLS: one finding a line
    if isinstance(e, ValueError) and ("certificate" in m or "CN" in m) and not m.startswith("mqtt."):
        return "its TLS certificate is not trusted: %s; check mqtt.ca_file and mqtt.host" % m
    return m or type(e).__name__
