# MQTT 3.1.1 (QoS 0) that nothing on the network can block or crash. umqtt.simple writes CONNECT
# while connecting (mqtt_connect.py); the few small packets of a session are encoded here, straight
# into the output buffer (kept for the session, umqtt's code would hold ~5 KB of heap for the
# device's whole life). The socket stays non-blocking end to end:
# - writes go to a bounded, preallocated output buffer sent from the loop (a broker that stops
#   reading is a connection fault, never a wait);
# - reads are framed by our own fixed-header reader into a preallocated input buffer, and a packet
#   is handled only once it is whole in memory; one larger than the buffer is drained chunk by
#   chunk, never allocated;
# - every wait has a deadline, and a path that vanishes without FIN/RST is found by the keepalive.
# Also: reconnect within seconds, last will, a bounded outbox (latest value per topic). The connect
# procedure is mqtt_connect.py, in memory only while not connected.
import gc
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio
from collections import OrderedDict

try:
    from micropython import const
except ImportError:  # CPython (bench speed comparison)
    def const(x):
        return x

import log

_OUT_SIZE = const(1536)  # our largest packet (the diag, ~0.7-1.3 KB; discovery ~0.7 KB) and then some
_IN_SIZE = const(384)  # the largest packet we take in: commands, HA's status, our retained totals
_RESERVE = const(16)  # kept free in the output buffer for PINGREQ, UNSUBSCRIBE, PUBACK
RETRY_MS = (500, 1000, 2000, 3000)  # broker down, refused, silent: back within seconds
_ACK_TIMEOUT_MS = const(10000)  # SUBACK, UNSUBACK
_PING_EVERY_MS = const(15000)  # or keepalive/2 if shorter
_PING_WAIT_MS = const(10000)  # or keepalive/2 if shorter: silence after a PINGREQ = the link is dead
_PACKETS_PER_STEP = const(8)
_READS_PER_STEP = const(8)  # up to 3 KB drained per step: a 1 MB message is gone in seconds
_OUTBOX_MAX = const(48)  # distinct topics waiting; our own topic set is far smaller
_LOG_BURST = const(5)  # refusals logged per _LOG_WINDOW_MS; the rest only counted
_LOG_WINDOW_MS = const(10000)
_WOULD_BLOCK = (11, 115, 119, -26880, -26752)  # EAGAIN, EINPROGRESS (unix, lwIP), mbedTLS WANT_READ/WRITE


class _Wire:
    """The socket and its two buffers, made once: they serve every connection. write() and the
    packet encoders only append to the output buffer; send() and fill() move bytes without
    waiting."""

    def __init__(self):
        self.obuf = bytearray(_OUT_SIZE)
        self.omv = memoryview(self.obuf)
        self.ibuf = bytearray(_IN_SIZE)
        self.imv = memoryview(self.ibuf)
        self.s = None
        self.attach(None)

    def attach(self, s):
        self.s = s
        self.o0 = self.o1 = 0  # bytes waiting to be sent: obuf[o0:o1]
        self.wlen = 0  # length of the write that would have blocked: retried with exactly that
        self.i0 = self.i1 = 0  # bytes received, not yet handled: ibuf[i0:i1]
        self.tail = self.imv  # ibuf[i1:], remade only when i1 moves (an idle read allocates nothing)
        self.skip = 0  # bytes of a refused packet still to drain
        self.p0 = self.pb = self.p1 = 0  # the current packet: start, variable header, end
        now = time.ticks_ms()
        self.last_rx = now
        self.last_tx = now  # last progress sending (or the moment the buffer stopped being empty)

    # --- packets out: appended to the output buffer (a whole packet or, OSError, nothing) ---
    def write(self, data):
        """data: bytes, a str (its UTF-8 bytes) or Parts."""
        if isinstance(data, Parts):
            n = data.n
            self._room(n)  # all of it fits, or OSError: never half a message
            for p in data.parts:
                self.write(p)
            return n
        if isinstance(data, str):
            data = _view(data)
        n = len(data)
        self._room(n)
        self.obuf[self.o1:self.o1 + n] = data
        self.o1 += n
        return n

    def head(self, first, n):
        """A packet's fixed header: its first byte and the remaining length n, once there is room
        for the whole packet (the caller then writes exactly n bytes)."""
        self._room((2 if n < 128 else 3 if n < 16384 else 4) + n)
        b = self.obuf
        i = self.o1
        b[i] = first
        while True:
            i += 1
            b[i] = n & 0x7F
            n >>= 7
            if not n:
                break
            b[i] |= 0x80
        self.o1 = i + 1

    def u16(self, v):
        self.obuf[self.o1] = v >> 8
        self.obuf[self.o1 + 1] = v & 0xFF
        self.o1 += 2

    def field(self, s):
        """A length-prefixed string (topic, client id, user name...): str or bytes."""
        v = _view(s)
        self.u16(len(v))
        self.write(v)

    def _room(self, n):
        if self.o1 + n > _OUT_SIZE:
            self._compact_out()
            if self.o1 + n > _OUT_SIZE:
                raise OSError("our output buffer is full: the broker is not taking our messages")
        if self.o0 == self.o1:
            self.last_tx = time.ticks_ms()

    def close(self):
        # What is buffered (e.g. "offline" and DISCONNECT at shutdown) gets one more try.
        s = self.s
        if s is None:
            return
        try:
            self.send()
        except (OSError, MemoryError):
            pass
        self.s = None
        try:
            s.close()
        except OSError:
            pass

    # --- output ---
    def _compact_out(self):
        n = self.o1 - self.o0
        if self.o0:
            self.obuf[0:n] = self.omv[self.o0:self.o1]
            self.o0, self.o1 = 0, n

    def send(self):
        """Push buffered bytes without waiting; the rest stays for the next step."""
        if self.o0 == self.o1 or self.s is None:
            return
        # mbedTLS: a write that would block must be repeated with the same data and length (it
        # has encrypted them already and will report that length); bytes queued since then wait.
        n = self.wlen or self.o1 - self.o0
        try:
            k = self.s.write(self.omv[self.o0:self.o0 + n])
        except OSError as e:
            if e.args and e.args[0] in _WOULD_BLOCK:
                self.wlen = n
                return
            raise
        if k is None:
            self.wlen = n
        elif k:
            if k < 0 or k > n:
                raise OSError("the connection is broken")
            self.wlen = 0
            self.o0 += k
            self.last_tx = time.ticks_ms()
            if self.o0 == self.o1:
                self.o0 = self.o1 = 0

    # --- input ---
    def fill(self):
        """One read into the free part of the input buffer -> bytes read (0: none now)."""
        if self.i1 == _IN_SIZE:
            if not self.i0:
                return 0  # full of a packet being refused: packet() makes room
            self._compact_in()
        try:
            k = self.s.readinto(self.tail)
        except OSError as e:
            if e.args and e.args[0] in _WOULD_BLOCK:
                return 0
            raise
        if k is None:
            return 0
        if k == 0:
            raise OSError("the broker closed the connection")
        self.last_rx = time.ticks_ms()
        self.i1 += k
        if self.skip:  # still draining a refused packet: these bytes go
            d = self.skip if self.skip < self.i1 - self.i0 else self.i1 - self.i0
            self.skip -= d
            self.i0 += d
        if self.i0 == self.i1:
            self.i0 = self.i1 = 0
            self.tail = self.imv
        else:
            self.tail = self.imv[self.i1:]
        return k

    def _compact_in(self):
        n = self.i1 - self.i0
        if self.i0:
            self.ibuf[0:n] = self.imv[self.i0:self.i1]
            self.i0, self.i1 = 0, n
            self.tail = self.imv[n:]

    def packet(self):
        """The next whole packet in the buffer -> its first byte (p0/pb/p1 locate it), or None
        while incomplete, or -1 once the head of a packet too large to take has been drained
        into the buffer (p0/pb/p1 then hold that head; the rest is skipped as it arrives)."""
        i0, i1 = self.i0, self.i1
        b = self.ibuf
        if i1 - i0 < 2:
            return None
        n = 0
        sh = 0
        i = i0 + 1
        while True:
            if i >= i1:
                return None
            c = b[i]
            i += 1
            n |= (c & 0x7F) << sh
            if not c & 0x80:
                break
            sh += 7
            if sh > 21:
                raise OSError("a malformed packet from the broker (bad length)")
        total = i - i0 + n
        if total > _IN_SIZE:
            if i1 - i0 < _IN_SIZE:  # take in a full buffer first: the head names the topic
                if i0:
                    self._compact_in()
                return None
            self.p0, self.pb, self.p1 = i0, i, i1
            self.skip = total - (i1 - i0)
            return -1
        if i1 - i0 < total:
            if i0 + total > _IN_SIZE:
                self._compact_in()
            return None
        self.p0, self.pb, self.p1 = i0, i, i0 + total
        return b[i0]

    def consume(self):
        self.i0 = self.p1
        if self.i0 >= self.i1:
            self.i0 = self.i1 = 0
            self.tail = self.imv


class Parts:
    """A payload in pieces (str or bytes), written one after the other: a large payload (a
    discovery announcement, ~0.7 KB) then needs no single large block of heap, which a fragmented
    heap may not have. len() is its size in bytes."""

    def __init__(self, parts):
        self.parts = parts
        n = 0
        for p in parts:
            n += len(_view(p))
        self.n = n

    def __len__(self):
        return self.n


def _view(s):
    # A str's UTF-8 bytes without a copy (MicroPython's str has the buffer protocol): a diag
    # payload is ~0.7 KB, and its copy was a second one at the heap's peak.
    if isinstance(s, str):
        try:
            return memoryview(s)
        except TypeError:  # CPython (the bench's speed comparison)
            return s.encode()
    return s


class Mqtt:
    def __init__(self, cfg, client_id, base, on_message, on_connect):
        m = cfg["mqtt"]
        self.host = m["host"]
        self.tls = m["tls"]
        self.ca_file = m.get("ca_file")  # checks the broker's certificate (mqtt_connect._tls)
        self.port = m["port"] or (8883 if self.tls else 1883)
        self.user = m["user"]
        self.password = m["password"]
        self.keepalive = m["keepalive_s"]
        ka_ms = self.keepalive * 1000
        self.ping_every = min(_PING_EVERY_MS, ka_ms // 2)
        self.ping_wait = min(_PING_WAIT_MS, ka_ms // 2)
        self.client_id = client_id
        self.base = base
        self.on_message = on_message  # (topic str, payload bytes, retained bool)
        self.on_connect = on_connect
        self.wire = _Wire()
        self.session = False  # CONNECT written: packets may follow it (mqtt_connect.py sets it)
        self.pid = 0  # the last packet id used (SUBSCRIBE, UNSUBSCRIBE)
        self.connected = False
        self.connects = 0
        self.failures = 0
        self.refusals = 0  # input refused (too large, malformed, invalid commands): diag mqtt_refused
        self.outbox = OrderedDict()  # topic -> payload, oldest first
        # The queued topics whose message is not retained (power, debug: few), instead of a
        # (payload, retain) tuple per publish: five per reading, for years. A topic leaves it when
        # its message leaves the outbox, so it holds no topic string longer than the outbox does.
        self._plain = set()
        self.dropped = 0
        self._ai = None  # the broker's address, resolved once (a DNS lookup can block)
        self._acks = {}  # packet id -> (deadline, what): SUBACK/UNSUBACK awaited
        self._connack = None
        self._rx_retain = False
        self._ping_at = 0  # when the last PINGREQ went out
        self._unanswered = None  # when the oldest unanswered PINGREQ went out
        self._log_t = 0
        self._log_n = 0
        self._log_hidden = 0
        self._log_last = None

    # --- what the app calls ---
    def publish(self, topic, payload, retain=False):
        # The flag first: a MemoryError after it leaves at most a mark without a message.
        if retain:
            self._plain.discard(topic)
        else:
            self._plain.add(topic)
        box = self.outbox
        if topic in box:
            del box[topic]  # keep only the newest value, and move it to the end
        elif len(box) >= _OUTBOX_MAX:
            self._take(next(iter(box)))
            self.dropped += 1
        box[topic] = payload

    def _take(self, topic):
        """Removes topic's message from the outbox -> whether it was to be retained."""
        del self.outbox[topic]
        if topic in self._plain:
            self._plain.discard(topic)
            return False
        return True

    def publish_parts(self, topic, parts, retain=False):
        """publish() for a payload in pieces (Parts): no single large block of heap needed."""
        self.publish(topic, Parts(parts), retain)

    def subscribe(self, topic):
        """Sends SUBSCRIBE (QoS 0) and returns; the SUBACK is awaited in the background (bounded)."""
        self._sub(0x82, topic)

    def unsubscribe(self, topic):
        """Sends UNSUBSCRIBE and returns; the UNSUBACK is awaited in the background (bounded)."""
        self._sub(0xA2, topic)

    def _sub(self, first, topic):
        w = self.wire
        n = len(_view(topic))
        pid = self.pid = (self.pid + 1) & 0xFFFF or 1
        w.head(first, 4 + n + (first == 0x82))
        w.u16(pid)
        w.field(topic)
        if first == 0x82:
            w.write(b"\0")  # the QoS we ask for
        self._acks[pid] = (time.ticks_add(time.ticks_ms(), _ACK_TIMEOUT_MS), topic)

    def _put(self, topic, payload, retain):
        """A PUBLISH (QoS 0) into the output buffer: whole, or OSError when there is no room.
        topic and payload: str, bytes, a memoryview of either, or (payload) Parts."""
        w = self.wire
        t = _view(topic)
        payload = _view(payload)  # sized in bytes, not characters
        w.head(0x31 if retain else 0x30, 2 + len(t) + len(payload))
        w.field(t)
        w.write(payload)

    def disconnect(self):
        """At shutdown: what is queued (some of it), "offline", then DISCONNECT (the broker then
        keeps the last will to itself) and the socket closed."""
        if self.session:
            self.flush(10)
            self._put(self.base + "/status", "offline", True)
            self.wire.write(b"\xe0\0")
        self._close()

    def refused(self, text):
        """Log refused input in words, at most _LOG_BURST lines per _LOG_WINDOW_MS (a flood must
        not flood the log); every refusal is counted (diag)."""
        self.refusals += 1
        now = time.ticks_ms()
        if time.ticks_diff(now, self._log_t) >= _LOG_WINDOW_MS:
            self._log_t = now
            self._log_n = 0
        if self._log_n >= _LOG_BURST:
            self._log_hidden += 1
            self._log_last = text
            return
        self._log_n += 1
        log.warn(text)

    def _log_summary(self):
        # Once the window is over, what was not shown is summed up (with the latest of them).
        if self._log_hidden and time.ticks_diff(time.ticks_ms(), self._log_t) >= _LOG_WINDOW_MS:
            log.warn("%d more refused in %d s, not shown; the latest: %s" % (
                self._log_hidden, _LOG_WINDOW_MS // 1000, self._log_last))
            self._log_hidden = 0
            self._log_last = None
            self._log_t = time.ticks_ms()
            self._log_n = 1

    def flush(self, n):
        """Queue up to n outbox messages into the output buffer as room allows, and send."""
        box = self.outbox
        w = self.wire
        while n and box and self.session:
            topic = next(iter(box))
            t = _view(topic)  # sized in bytes, not characters
            p = _view(box[topic])
            size = len(t) + len(p) + 7
            if size > _OUT_SIZE - _RESERVE:
                self._take(topic)
                log.warn("MQTT message on %s too large to send (%d bytes): dropped" % (topic, size))
                continue
            if _OUT_SIZE - (w.o1 - w.o0) < size + _RESERVE:
                break  # the broker is slow to take them: the rest waits (the stall check bounds it)
            self._put(t, p, self._take(topic))
            n -= 1
        w.send()

    def poll(self):
        """One step of a connected session, never waiting: take in what arrived (bounded), send a
        few queued messages, keepalive and deadlines. Raises OSError on a connection fault."""
        self._input()
        self.flush(2)
        self._check_times()
        self._log_summary()

    # --- the session ---
    async def run(self, network_up):
        while True:
            if not network_up():
                self._drop("network down")
                await asyncio.sleep_ms(500)
                continue
            # The connect procedure and its texts (mqtt_connect.py) are in memory only while
            # not connected: a connected device has no use for them.
            try:
                gc.collect()  # its code goes into the holes garbage leaves, not on top of them
                import mqtt_connect
                delay = await mqtt_connect.attempt(self)
            except MemoryError:  # no room for it now: a failed attempt, said in words
                self._close()
                self.failures += 1
                delay = RETRY_MS[-1]
                if self.failures in (1, 3) or self.failures % 20 == 0:
                    log.warn("MQTT: not enough free memory to connect to %s:%d (%d bytes free); retrying "
                             "every %d s" % (self.host, self.port, gc.mem_free(), delay // 1000))
            if delay:
                await asyncio.sleep_ms(delay)
                continue
            mqtt_connect = None
            _unload("mqtt_connect")
            self.connected = True
            self.connects += 1
            log.info("MQTT connected to %s:%d" % (self.host, self.port))
            self.failures = 0
            try:
                self._put(self.base + "/status", "online", True)
                await self.on_connect(self)
                while True:
                    if not network_up():
                        raise OSError("network down")
                    self.poll()
                    await asyncio.sleep_ms(20)
            except (OSError, MemoryError, AssertionError, IndexError, TypeError, ValueError) as e:
                # MemoryError included: memory pressure costs a reconnect, never the firmware.
                self._drop(e)
            await asyncio.sleep_ms(RETRY_MS[0])

    def _close(self):
        self.session = False
        self.wire.close()

    def _drop(self, why):
        """why: an exception or words."""
        was = self.connected
        self.connected = False
        self._close()
        if was:
            try:
                import mqtt_connect  # the reconnect needs it next anyway; it has the words
                why = mqtt_connect.reason(why)
            except MemoryError:
                why = "out of memory"
            log.warn("MQTT connection lost (%s); reconnecting" % why)

    # --- input ---
    def _input(self):
        w = self.wire
        reads = 0
        n = 0
        while n < _PACKETS_PER_STEP:
            op = w.packet()
            if op is None:
                if reads == _READS_PER_STEP or not w.fill():
                    return
                reads += 1
                continue
            try:
                self._handle(op)
            finally:
                w.consume()
            n += 1

    def _handle(self, op):
        w = self.wire
        b = w.ibuf
        p = w.pb
        n = w.p1 - p
        kind = op & 0xF0
        if op == -1:
            self._too_large()
        elif kind == 0x30:
            self._publish_in(op)
        elif kind == 0xD0:  # PINGRESP
            self._unanswered = None
        elif kind in (0x90, 0xB0) and n >= 2:  # SUBACK, UNSUBACK
            pid = b[p] << 8 | b[p + 1]
            a = self._acks.pop(pid, None)
            if a is not None and kind == 0x90 and (n < 3 or b[p + 2] & 0x80):
                log.warn("the MQTT broker refused our subscription to %s (its access rules?): "
                         "commands from Home Assistant will not arrive" % a[1])
        elif kind == 0x20 and n == 2 and self._connack is None:  # CONNACK
            self._connack = b[p + 1]
        else:
            self.refused("unexpected MQTT packet (type 0x%02x, %d bytes) from the broker: ignored" % (op, n))

    def _topic_at(self, p, end):
        """The topic of a PUBLISH whose variable header starts at p, for a log line."""
        b = self.wire.ibuf
        if end - p < 2:
            return "?"
        tl = b[p] << 8 | b[p + 1]
        if tl > 80 or p + 2 + tl > end:
            return "(a long topic)"
        try:
            return bytes(b[p + 2:p + 2 + tl]).decode()
        except UnicodeError:
            return "(a topic that is not text)"

    def _too_large(self):
        w = self.wire
        size = w.p1 - w.p0 + w.skip
        if w.ibuf[w.p0] & 0xF0 == 0x30:
            self.refused("MQTT message of %d bytes on %s refused: larger than the %d bytes accepted "
                         "(drained, not read)" % (size, self._topic_at(w.pb, w.p1), _IN_SIZE))
        else:
            self.refused("MQTT packet of %d bytes from the broker (type 0x%02x) refused: too large"
                         % (size, w.ibuf[w.p0]))

    def _publish_in(self, op):
        w = self.wire
        b = w.ibuf
        p = w.pb
        end = w.p1
        qos = (op >> 1) & 3
        tl = b[p] << 8 | b[p + 1] if end - p >= 2 else 0
        if tl == 0 or p + 2 + tl + (2 if qos else 0) > end or qos == 3:
            return self.refused("malformed MQTT message from the broker: ignored")
        if qos == 2:  # we subscribe with QoS 0: its four-packet handshake is not worth having
            return self.refused("MQTT message with QoS 2 on %s refused (we subscribe with QoS 0)"
                                % self._topic_at(p, end))
        i = p + 2 + tl
        if qos:  # QoS 1 (a broker may keep a sender's QoS): acknowledged, into the reserve
            w.head(0x40, 2)
            w.u16(b[i] << 8 | b[i + 1])
            i += 2
        self._rx_retain = bool(op & 1)
        m = w.imv
        self._message(bytes(m[p + 2:p + 2 + tl]), bytes(m[i:end]))

    def _message(self, topic, msg):
        try:
            t = topic.decode()
        except UnicodeError:
            return self.refused("MQTT message on a topic that is not text: ignored")
        try:
            self.on_message(t, msg, self._rx_retain)
        except Exception as e:  # a bad command must never take the connection down
            log.warn("MQTT message on %s not handled: %s" % (
                t, "out of memory" if isinstance(e, MemoryError) else str(e) or type(e).__name__))

    # --- time ---
    def _check_times(self):
        w = self.wire
        now = time.ticks_ms()
        if time.ticks_diff(now, self._ping_at) >= self.ping_every:
            w.write(b"\xc0\0")  # PINGREQ: 2 bytes into the reserve
            w.send()
            self._ping_at = now
            if self._unanswered is None:
                self._unanswered = now
        u = self._unanswered
        if u is not None:
            # Silence since the ping went out (a flood of input keeps the link alive: it is data).
            since = w.last_rx if time.ticks_diff(w.last_rx, u) > 0 else u
            if time.ticks_diff(now, since) > self.ping_wait:
                raise OSError("no answer from the broker for %s s after a keepalive ping: the network "
                              "path or the broker is gone" % _secs(time.ticks_diff(now, u)))
        if w.o1 != w.o0 and time.ticks_diff(now, w.last_tx) > self.ping_wait + self.ping_every:
            raise OSError("the broker has not taken our data for %s s"
                          % _secs(time.ticks_diff(now, w.last_tx)))
        for pid in self._acks:
            a = self._acks[pid]
            if time.ticks_diff(now, a[0]) > 0:
                raise OSError("the broker did not acknowledge our subscription change for %s within %d s"
                              % (a[1], _ACK_TIMEOUT_MS // 1000))


def _unload(name):
    import sys
    sys.modules.pop(name, None)


def _secs(ms):
    return "%d" % (ms // 1000) if ms % 1000 == 0 or ms >= 10000 else "%.1f" % (ms / 1000)
