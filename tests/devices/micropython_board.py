"""A simulated MicroPython board: the real `micropython` unix port on a private pty.

The owner feeds it bytes (write) and receives its output (on_output callback; also kept in
.console). Its working directory plays the board's filesystem, kept across reboots. It starts as
the ESP32 port does (board_start.py): boot.py, main.py, then the REPL. What a board does and the
unix port alone does not:
- Ctrl-C while code runs interrupts it (KeyboardInterrupt: sent as SIGINT, which the unix port
  catches only while it executes code); while the REPL waits for input it is a plain byte.
- When the interpreter exits, the board restarts: exit status 0 is a soft reset (Ctrl-D: boot.py
  runs, and main.py too unless the raw REPL was active), anything else a hard reset (the
  firmware's reset(), its watchdog: SIGKILL).
- The watchdog survives a soft reset: if the firmware had started it (board/unix.py writes
  VUE_WDT_STATE), the next boot must take it over within its timeout, or the board is reset.
"""
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tty

MICROPYTHON = os.environ.get("MICROPYTHON") or shutil.which("micropython") or "micropython"
START = os.path.join(os.path.dirname(os.path.abspath(__file__)), "board_start.py")
RAW_PROMPT = b"raw REPL; CTRL-B to exit"


class MicroPythonBoard:
    def __init__(self, fsdir, on_output, env=None):
        self.fsdir = fsdir
        self.on_output = on_output
        self.env = env or {}
        self.boots = 0
        self.resets = []  # each reboot: "soft", "hard reset (status N)" (-9: watchdog, reset()), ...
        self.console = bytearray()  # everything the board printed, across reboots
        self._cond = threading.Condition()
        self._proc = None
        self._master = None
        self._raw = False  # the raw REPL is active (a soft reset then skips main.py)
        self._tail = b""
        self._wdt_deadline = None  # after a soft reset with the watchdog running
        self._tmp = tempfile.TemporaryDirectory(prefix="mpboard-")
        self._wdt_state = os.path.join(self._tmp.name, "wdt")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None

    def start(self):
        os.makedirs(self.fsdir, exist_ok=True)
        self._stop.clear()
        self._boot("power-on")
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        return self

    def _boot(self, how):
        master, slave = os.openpty()
        # Raw before the interpreter starts: a Ctrl-C that arrives early must reach it as a byte,
        # not become SIGINT from the line discipline.
        tty.setraw(slave)
        env = dict(os.environ, VUE_BOOT=how, VUE_BOARD_REPL="1", VUE_WDT_STATE=self._wdt_state)
        env.pop("MICROPYPATH", None)
        env.update(self.env)
        self._proc = subprocess.Popen([MICROPYTHON, "-i", START], cwd=self.fsdir, stdin=slave,
                                      stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self._raw = False
        with self._lock:
            self._master = master
        if how == "soft-raw":
            os.write(master, b"\x01")  # the board stays in the raw REPL across the soft reset
        self.boots += 1

    def write(self, data):
        with self._lock:
            m, p = self._master, self._proc
        if m is None:
            return
        if b"\x02" in data:
            self._raw = False
        if b"\x03" in data and p is not None and _runs_code(p.pid):
            # The board's UART interrupt turns Ctrl-C into KeyboardInterrupt while code runs;
            # the byte itself is consumed.
            data = data.replace(b"\x03", b"")
            try:
                p.send_signal(signal.SIGINT)
            except OSError:
                pass
        try:
            os.write(m, data)
        except OSError:
            pass

    def _output(self, data):
        with self._cond:
            self.console += data
            self._cond.notify_all()
        seen = self._tail + data
        if RAW_PROMPT in seen:
            self._raw = True
        self._tail = seen[-len(RAW_PROMPT):]
        self.on_output(data)

    def wait_console(self, pattern, timeout=20, start=0):
        """The first match of regex `pattern` (bytes) in the console after offset `start`."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self._cond:
            while True:
                m = rx.search(bytes(self.console), start)
                if m:
                    return m
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError("the board never printed %r; its console ends with:\n%s" % (
                        pattern, bytes(self.console[-3000:]).decode(errors="replace")))
                self._cond.wait(min(left, 0.5))

    def _pump(self):
        while not self._stop.is_set():
            m = self._master
            try:
                r, _, _ = select.select([m], [], [], 0.1)
                data = os.read(m, 4096) if r else b""
            except OSError:  # EIO: the interpreter exited and closed its side
                data = None
            if data:
                self._output(data)
                continue
            if self._stop.is_set():
                break
            if data is None or self._proc.poll() is not None:
                self._reboot()
            elif self._wdt_deadline is not None:
                self._check_wdt()

    def _note(self, text):
        """A line in .console only (not sent to the host): what happened to the board."""
        with self._cond:
            self.console += b"\n[board: %s]\n" % text.encode()
            self._cond.notify_all()

    def _reboot(self):
        raw = self._raw
        self._reap()
        status = self._proc.returncode
        self._note("exit status %s: %s reset" % (status, "soft" if status == 0 else "hard"))
        if status == 0:
            self.resets.append("soft")
            if os.path.exists(self._wdt_state):  # the watchdog runs on: the next boot must take it over
                with open(self._wdt_state) as f:
                    timeout_ms = int(f.read().split()[0])
                os.remove(self._wdt_state)
                self._wdt_deadline = time.time() + timeout_ms / 1000
            self._boot("soft-raw" if raw else "soft")
        else:
            self.resets.append("hard reset (status %s)" % status)
            self._hard_boot()

    def _check_wdt(self):
        if os.path.exists(self._wdt_state):
            self._wdt_deadline = None  # taken over by the firmware
        elif time.time() > self._wdt_deadline:
            self.resets.append("watchdog after a soft reset")
            self._output(b"\r\n[board] watchdog: not taken over after the soft reset: resetting\r\n")
            self._reap()
            self._hard_boot()

    def _hard_boot(self):
        self._wdt_deadline = None
        if os.path.exists(self._wdt_state):
            os.remove(self._wdt_state)
        self._boot("power-on")

    def power_cycle(self):
        """Cut the power and turn it back on (what a user does to a stuck board)."""
        with self._lock:
            p = self._proc
        self.resets.append("power cycle")
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        self._reap()
        self._stop.clear()
        self._hard_boot()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        return p

    def _reap(self):
        p = self._proc
        if p and p.poll() is None:
            p.kill()
        if p:
            p.wait()
        with self._lock:
            m, self._master = self._master, None
        if m is not None:
            os.close(m)

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        self._reap()
        self._tmp.cleanup()


def _runs_code(pid):
    """True while the interpreter executes code: the unix port catches SIGINT only then."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except (OSError, ValueError):
        pass
    return False
