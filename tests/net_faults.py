"""Network faults for the MQTT tests and bench/mqtt_steps.py, made with real TCP on loopback:

- SilentBroker: accepts TCP connections, reads what it is sent, never answers (a hung broker, or
  a port forward to nothing that still completes the handshake).
- Proxy: forwards TCP to a real broker, optionally adding a one-way delay (an IP path with a round
  trip, as the ESP32 has to its broker), and can `freeze()`: stop forwarding in both directions
  WITHOUT closing anything, the way a Wi-Fi access point that vanishes looks to a client (no FIN,
  no RST; connects made meanwhile complete but are never answered).
CPython only (threads)."""
import collections
import select
import socket
import threading
import time


def _listener(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port or 0))
    ls.listen(16)
    return ls


class SilentBroker:
    """Accepts TCP and stays silent. `received` counts the bytes clients sent (a CONNECT each)."""

    def __init__(self, port=None):
        self.ls = _listener(port)
        self.port = self.ls.getsockname()[1]
        self.accepted = 0
        self.received = 0
        self._conns = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            socks = [self.ls] + self._conns
            try:
                r, _, _ = select.select(socks, [], [], 0.05)
            except (OSError, ValueError):
                continue
            for s in r:
                if s is self.ls:
                    try:
                        c, _ = s.accept()
                    except OSError:
                        continue
                    self._conns.append(c)
                    self.accepted += 1
                    continue
                try:
                    d = s.recv(4096)
                except OSError:
                    d = b""
                if d:
                    self.received += len(d)
                else:  # the client gave up: forget it, as a hung broker would eventually
                    self._conns.remove(s)
                    s.close()

    def stop(self):
        self._stop = True
        self._t.join(2)
        for c in self._conns:
            c.close()
        self.ls.close()


class _Pipe:
    """One direction of a proxied connection: read, hold for `delay` s, send."""

    def __init__(self, src, dst):
        self.src = src
        self.dst = dst
        self.queue = collections.deque()  # (due time, bytes)
        self.eof = False


class Proxy:
    """TCP forwarder to 127.0.0.1:target_port with an optional one-way delay; freeze()/thaw()."""

    def __init__(self, target_port, port=None, delay_s=0.0):
        self.target_port = target_port
        self.delay_s = delay_s
        self.ls = _listener(port)
        self.port = self.ls.getsockname()[1]
        self.frozen = False
        self.accepted = 0
        self._pairs = []  # (client, upstream, pipe up, pipe down)
        self._holes = []  # connections accepted while frozen: never answered
        self._lock = threading.Lock()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._t.start()
        return self

    def freeze(self):
        """The path vanishes: nothing is read or delivered any more, nothing is closed."""
        with self._lock:
            self.frozen = True

    def thaw(self):
        with self._lock:
            self.frozen = False

    def cut(self):
        """Close every proxied connection at once (what a broker restart looks like to a client)."""
        with self._lock:
            for c, u, _, _ in self._pairs:
                c.close()
                u.close()
            self._pairs = []

    def _accept(self):
        try:
            c, _ = self.ls.accept()
        except OSError:
            return
        self.accepted += 1
        if self.frozen:
            self._holes.append(c)
            return
        u = socket.socket()
        try:
            u.connect(("127.0.0.1", self.target_port))
        except OSError:
            c.close()  # broker down: the client sees the connection closed
            u.close()
            return
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pairs.append((c, u, _Pipe(c, u), _Pipe(u, c)))

    def _run(self):
        while not self._stop:
            with self._lock:
                frozen = self.frozen
                pairs = list(self._pairs)
            reading = [self.ls]
            pipes = {}
            now = time.monotonic()
            timeout = 0.02
            for c, u, up, down in pairs:
                for p in (up, down):
                    if not frozen and not p.eof:
                        reading.append(p.src)
                        pipes[p.src] = p
                    if p.queue and not frozen:
                        timeout = max(0.0, min(timeout, p.queue[0][0] - now))
            try:
                r, _, _ = select.select(reading, [], [], timeout)
            except (OSError, ValueError):
                continue  # a socket closed under us (cut); the next round rebuilds the list
            for s in r:
                if s is self.ls:
                    self._accept()
                    continue
                p = pipes[s]
                try:
                    d = s.recv(65536)
                except OSError:
                    d = b""
                if d:
                    p.queue.append((time.monotonic() + self.delay_s, d))
                else:
                    p.eof = True
            if frozen:
                continue
            now = time.monotonic()
            dead = []
            for pair in pairs:
                for p in pair[2:]:
                    while p.queue and p.queue[0][0] <= now:
                        try:
                            p.dst.sendall(p.queue.popleft()[1])
                        except OSError:
                            p.eof = True
                            p.queue.clear()
                    if p.eof and not p.queue:
                        dead.append(pair)
            with self._lock:
                for pair in dead:
                    if pair in self._pairs:
                        self._pairs.remove(pair)
                        pair[0].close()
                        pair[1].close()

    def stop(self):
        self._stop = True
        self._t.join(2)
        self.cut()
        for h in self._holes:
            h.close()
        self.ls.close()
