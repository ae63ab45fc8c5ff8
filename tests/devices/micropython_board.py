"""A simulated MicroPython board: the real `micropython` unix port on a private pty.

The owner feeds it bytes (write) and receives its output (on_output callback). Its working
directory plays the board's filesystem, kept across reboots. When the interpreter exits (Ctrl-D,
a soft reset under mpremote without `resume`), it is started again, as a board reboots.
"""
import os
import select
import shutil
import subprocess
import threading
import tty

MICROPYTHON = shutil.which("micropython") or "micropython"


class MicroPythonBoard:
    def __init__(self, fsdir, on_output):
        self.fsdir = fsdir
        self.on_output = on_output
        self.boots = 0
        self._proc = None
        self._master = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = None

    def start(self):
        os.makedirs(self.fsdir, exist_ok=True)
        self._stop.clear()
        self._boot()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        return self

    def _boot(self):
        master, slave = os.openpty()
        # Raw before the interpreter starts: a Ctrl-C that arrives early must reach it as a byte,
        # not become SIGINT from the line discipline.
        tty.setraw(slave)
        env = dict(os.environ, MICROPYPATH=".:.frozen")
        self._proc = subprocess.Popen([MICROPYTHON], cwd=self.fsdir, stdin=slave, stdout=slave,
                                      stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        with self._lock:
            self._master = master
        self.boots += 1

    def write(self, data):
        with self._lock:
            m = self._master
        if m is not None:
            try:
                os.write(m, data)
            except OSError:
                pass

    def _pump(self):
        while not self._stop.is_set():
            m = self._master
            try:
                r, _, _ = select.select([m], [], [], 0.1)
                data = os.read(m, 4096) if r else b""
            except OSError:  # EIO: the interpreter exited and closed its side
                data = None
            if data:
                self.on_output(data)
                continue
            if data is None or self._proc.poll() is not None:
                if self._stop.is_set():
                    break
                self._reap()
                self._boot()  # the board reboots

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
