"""The test-side peers: Home Assistant (a paho client) and the firmware process (its console)."""
import json
import re
import threading
import time


class HomeAssistant:
    """What HA would see: every message on the broker, with retain flags, in order."""

    def __init__(self, port):
        import paho.mqtt.client as mqtt
        self.port = port
        self.messages = []  # (topic, payload str, retain)
        self.cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha-%d" % id(self))
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe([("#", 0)])
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append((msg.topic, msg.payload.decode(errors="replace"), bool(msg.retain)))
            self.cond.notify_all()

    def publish(self, topic, payload, retain=False):
        self.c.publish(topic, payload, retain=retain).wait_for_publish(5)

    def wait_for(self, pred, timeout=20, what="message"):
        """First message (topic, payload, retain) for which pred is true, waiting up to timeout s."""
        deadline = time.time() + timeout
        seen = 0
        with self.cond:
            while True:
                for m in self.messages[seen:]:
                    if pred(*m):
                        return m
                seen = len(self.messages)
                left = deadline - time.time()
                if left <= 0:
                    tail = "\n".join("  %s %s" % (t, p[:100]) for t, p, r in self.messages[-15:])
                    raise AssertionError("timed out waiting for %s; last messages:\n%s" % (what, tail))
                self.cond.wait(left)

    def wait_topic(self, suffix, pred=lambda p: True, timeout=20, after=0):
        """The first message on a topic ending with `suffix`, index >= after, whose payload passes."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.messages)):
                    t, p, r = self.messages[i]
                    if t.endswith(suffix) and pred(p):
                        return p
                left = deadline - time.time()
                if left <= 0:
                    tail = "\n".join("  %s %s" % (t, p[:100]) for t, p, r in self.messages[-15:])
                    raise AssertionError("timed out waiting for %s; last messages:\n%s" % (suffix, tail))
                self.cond.wait(left)

    def values(self, suffix):
        with self.cond:
            return [p for t, p, r in self.messages if t.endswith(suffix)]

    def mark(self):
        with self.cond:
            return len(self.messages)

    def diag(self, pred=lambda d: True, timeout=20, after=0):
        return json.loads(self.wait_topic("/diag", lambda p: pred(json.loads(p)), timeout, after))

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


class Firmware:
    def __init__(self, workdir, proc):
        self.workdir = workdir
        self.proc = proc
        self.lines = []
        self.cond = threading.Condition()
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()

    def _pump(self):
        for raw in iter(self.proc.stdout.readline, b""):
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    @property
    def output(self):
        with self.cond:
            return "\n".join(self.lines)

    def wait_log(self, pattern, timeout=20):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if rx.search(line):
                        return line
                left = deadline - time.time()
                if left <= 0 or (self.proc.poll() is not None and not self.t.is_alive()):
                    raise AssertionError("no log line /%s/; output:\n%s" % (pattern, "\n".join(self.lines[-40:])))
                self.cond.wait(min(left, 0.5))

    def wait_exit(self, timeout=20):
        self.proc.wait(timeout)
        self.t.join(5)
        return self.proc.returncode

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.t.join(5)
