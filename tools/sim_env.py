"""Run the firmware with no hardware: a private mosquitto and the firmware under the MicroPython
unix port, pointed at a simulated MGM111. Used by `make sim` (tools/run_sim.py) and the tests."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(ROOT, "firmware")
LIB = os.path.join(ROOT, "build", "lib")


def port_open(port, host="127.0.0.1"):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_path():
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not path:
        sys.exit("mosquitto is not installed: apt-get install mosquitto (or run `make deps` as root)")
    return path


class Broker:
    """A private mosquitto on a loopback port; restartable (the tests kill it to prove reconnects)."""

    def __init__(self, port=None, workdir=None, persistence=True, users=None):
        self.port = port or free_port()
        self.dir = workdir or tempfile.mkdtemp(prefix="vue-broker-")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        lines = ["listener %d 127.0.0.1" % self.port, "persistence %s" % ("true" if persistence else "false"),
                 "persistence_location %s/" % self.dir, "log_dest stderr"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to its own user and cannot read our files
        if users:
            pw = os.path.join(self.dir, "passwd")
            with open(pw, "w") as f:
                f.write("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", pw, user, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", "password_file " + pw]
        else:
            lines.append("allow_anonymous true")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self):
        self.log = open(os.path.join(self.dir, "broker.log"), "ab")
        self.proc = subprocess.Popen([mosquitto_path(), "-c", self.conf], stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("mosquitto did not start on port %d (see %s)" % (self.port, self.log.name))
            time.sleep(0.05)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves retained messages (persistence)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def firmware_config(uart_device, mqtt_port, **sections):
    """A config.json for the unix port; `sections` override parts, e.g. meter={...}."""
    cfg = {
        "device_name": "Vue Utility Connect (simulated)",
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "keepalive_s": 10},
        "meter": {"poll_interval_s": 5, "startup_delay_s": 0},
        "uart": {"device": uart_device},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def compile_firmware(outdir):
    """Compile the app to .mpy as deployed on the device (source would not even compile in a
    small heap); returns the directory to put first on MICROPYPATH."""
    os.makedirs(outdir, exist_ok=True)
    sources = [(os.path.join(FIRMWARE, rel), rel) for rel in _py_files(FIRMWARE)]
    sources.append((os.path.join(LIB, "umqtt", "simple.py"), os.path.join("umqtt", "simple.py")))
    for src, rel in sources:
        if rel == "main.py":
            # main.py stays source (as on the device) beside the .mpy files: run from there, its
            # directory is first on sys.path, so imports find the .mpy and not firmware/*.py.
            shutil.copy(src, os.path.join(outdir, rel))
            continue
        dst = os.path.join(outdir, rel[:-3] + ".mpy")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        subprocess.run(["mpy-cross", "-o", dst, src], check=True)
    return outdir


def _py_files(top):
    for d, _, files in os.walk(top):
        for f in files:
            if f.endswith(".py"):
                yield os.path.relpath(os.path.join(d, f), top)


def start_firmware(workdir, cfg=None, heapsize=None, device_id="sim0001", stdout=None, extra_env=None,
                   mpy_dir=None):
    """Run firmware/main.py under `micropython` with cwd=workdir (config.json and state.json there)."""
    os.makedirs(workdir, exist_ok=True)
    if cfg is not None:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
    if not os.path.exists(os.path.join(LIB, "umqtt", "simple.py")):
        sys.exit("umqtt.simple is missing: run `make deps` first")
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join(([mpy_dir] if mpy_dir else []) + [FIRMWARE, LIB, ".frozen"])
    env["VUE_DEVICE_ID"] = device_id
    env.update(extra_env or {})
    cmd = ["micropython"]
    if heapsize:
        cmd += ["-X", "heapsize=%s" % heapsize]
    cmd.append(os.path.join(mpy_dir or FIRMWARE, "main.py"))
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=stdout or subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
