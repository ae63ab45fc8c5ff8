# MQTT's connect procedure (mqtt.py): in memory only while not connected; Mqtt.run imports it for
# an attempt and drops it once connected (heap is scarce, and a connected device never needs it).
# Every wait is bounded and non-blocking, as in mqtt.py: TCP connect, TLS handshake, CONNACK.
import select
import socket
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

import log
import umqtt.simple as _umqtt
from mqtt import (CONNECT_TIMEOUT_MS, LOGIN_RETRY_MS, RETRY_MS, _WOULD_BLOCK, _WouldWait, _b, _reason,
                  _secs)


async def attempt(mq):
    """One connect attempt -> 0 when connected, else the ms to wait before the next (said in words,
    at the 1st, 3rd and every 20th failure in a row)."""
    try:
        await _connect(mq)
        return 0
    except _umqtt.MQTTException as e:  # the CONNACK said no
        mq._close()
        delay = _failed(mq, LOGIN_RETRY_MS if e.args[0] in (2, 4, 5) else RETRY_MS)
        if mq.failures in (1, 3) or mq.failures % 20 == 0:
            log.warn("MQTT broker %s:%d %s; retrying every %s s" % (
                mq.host, mq.port, _refusal(mq, e.args[0]), _secs(delay)))
    except (OSError, MemoryError, _WouldWait, AssertionError, IndexError, TypeError, ValueError) as e:
        mq._close()
        delay = _failed(mq, RETRY_MS)
        if mq.failures in (1, 3) or mq.failures % 20 == 0:
            log.warn("MQTT broker %s:%d not reachable (%s); retrying every %s s" % (
                mq.host, mq.port, _reason(e), _secs(delay)))
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
        # umqtt writes a packet in 2-4 pieces; we send them together, but no Nagle delay either.
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
        import ssl
        # do_handshake=False: the handshake advances inside our non-blocking reads and writes
        # (each mbedTLS step still computes in one go: the key exchange costs CPU, not waiting).
        w.s = ssl.wrap_socket(s, server_hostname=mq.host, do_handshake=False)
    c = _umqtt.MQTTClient(_b(mq.client_id), mq.host, mq.port, _b(mq.user),
                          _b(mq.password or "") if mq.user is not None else None,
                          keepalive=mq.keepalive)
    c.set_callback(mq._message)
    c.set_last_will(_b(mq.base + "/status"), b"offline", retain=True)
    real = _umqtt.socket
    _umqtt.socket = w  # umqtt's connect() takes its socket from there
    try:
        c.connect()  # writes CONNECT into our buffer; it cannot read the CONNACK: _WouldWait
    except _WouldWait:
        pass
    finally:
        _umqtt.socket = real
    mq.client = c
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
        raise _umqtt.MQTTException(mq._connack)
    mq._ping_at = time.ticks_ms()
    mq._unanswered = None


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
