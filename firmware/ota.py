# Updates of the app over the air, over the MQTT session the device already has (no listening
# port, nothing new to open). The user's computer (tools/ota.py) puts a release on the broker,
# retained: <base>/ota/release, a header signed with HMAC-SHA256 under the key both share
# (secrets.json ota.key) that names the manifest by size and sha256; then the manifest, the files
# and optionally a config.json in chunks under <base>/ota/<rid>/... (docs/architecture.md).
# On Install the device takes one chunk at a time (subscribe, take it, unsubscribe: the broker keeps
# the rest, the heap holds one chunk), checks every file's size and sha256, stages everything in the
# slot that is not running, writes its manifest last and switches app.json with one rename
# (probation.switch): the next boot runs the new app on probation, and probation.py brings the previous
# one back unless the new one confirms itself healthy (app.py).
# This module: the release check and what the update entity says; in memory only while a release is
# checked or the state is published (app.py imports it and drops it again). The install itself is
# ota_job.py, in memory only while one runs.
import binascii
import hashlib
import json
import sys

import loader
import log

CHUNK_MAX = 320  # what fits the MQTT input buffer (384 B) with the topic
OFF = ("Updates over the air are off: no ota.key in secrets.json (make ota-key on your computer, "
       "then make config)")
TITLE = "vue-utility app"


class Refused(Exception):
    """An install or a release that cannot be used; its text says why, in words."""


def _hmac(key, msg):
    # HMAC-SHA256 (RFC 2104): MicroPython has hashlib, not hmac. The key is 32 bytes (< block).
    k = bytearray(64)
    k[:len(key)] = key
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in k))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in k))
    outer.update(inner.digest())
    return outer.digest()


def _same(a, b):
    # Compared in constant time: how long a refusal takes says nothing about the signature.
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


def _hex_ok(s, n):
    if not isinstance(s, str) or len(s) != n:
        return False
    for c in s:
        if c not in "0123456789abcdef":
            return False
    return True


def mpy_version():
    """The .mpy major version this MicroPython loads, or None where it cannot say."""
    v = getattr(sys.implementation, "_mpy", None)
    return None if v is None else v & 0xFF


def key_of(app):
    k = app.cfg["ota"]["key"]
    return binascii.unhexlify(k) if k else None


def installed(app):
    return loader.version or app.version


def note(app):
    """What the update entity says (its release summary), in words."""
    job = app.ota_job
    if not app.cfg["ota"]["key"]:
        return OFF
    if job is not None:
        return job.note()
    if app.ota_note:
        return app.ota_note
    f = loader.failed
    if f:
        return "Version %s was installed and rolled back: %s" % (f.get("version"), f.get("why"))
    if loader.trial is not None:
        return "Version %s is on probation: it stays once MQTT is connected and the MGM111 answers" % (
            installed(app))
    r = app.ota_release
    if r is not None:
        return r["sum"] or ("Version %s is on the broker" % r["v"])
    return "No release on the broker (make ota publishes one)"


def state_json(app):
    """<base>/ota/state: Home Assistant's update entity."""
    inst = installed(app)
    r = app.ota_release
    busy = app.ota_job is not None
    return json.dumps({
        "installed_version": inst,
        "latest_version": r["v"] if r is not None else inst,
        "title": TITLE,
        "release_summary": note(app)[:255],
        "in_progress": busy,
        "update_percentage": (app.ota_pct or 0) if busy else None,
    })


def device_json(app):
    """<base>/ota/device: what tools/ota.py needs to build a release for this device and to follow
    an install."""
    return json.dumps({
        "device": app.node_id, "version": installed(app), "mpy": mpy_version(),
        "ota": bool(app.cfg["ota"]["key"]), "trial": loader.trial is not None,
        "busy": app.ota_job is not None, "failed": loader.failed, "note": note(app)[:255],
    })


def _said(app, text, warn=True):
    app.ota_note = text
    app.ota_dirty = True
    if warn:
        log.warn(text)
    else:
        log.info(text)


# --- the release header -------------------------------------------------------------------------
def check_release(msg, key, node_id, mpy):
    """The release header (bytes) -> its fields (dict), or Refused with the reason in words."""
    if len(msg) < 66 or msg[64:65] != b" ":
        raise Refused("it is not a signed release header")
    body = msg[65:]
    if not _same(binascii.hexlify(_hmac(key, body)), msg[:64]):
        raise Refused("its signature is not valid: it was not made with this device's ota.key")
    try:
        r = json.loads(body)
    except ValueError:
        raise Refused("its header cannot be read")
    if not isinstance(r, dict):
        raise Refused("its header cannot be read")
    v, man, cfg, chunk = r.get("v"), r.get("man"), r.get("cfg"), r.get("chunk")
    if not isinstance(v, str) or not 0 < len(v) <= 32 or not _hex_ok(r.get("rid"), 8) \
            or type(chunk) is not int or not 0 < chunk <= CHUNK_MAX or not _file_ref(man) \
            or (cfg is not None and not _file_ref(cfg)) or not isinstance(r.get("sum", ""), str):
        raise Refused("its header cannot be read")
    if r.get("dev") != node_id:
        raise Refused("it is for device %s, this is %s" % (str(r.get("dev"))[:40], node_id))
    if mpy is not None and r.get("mpy") is not None and r["mpy"] != mpy:
        raise Refused("its files are .mpy version %s; this MicroPython loads version %d (rebuild it with "
                      "a matching mpy-cross)" % (r["mpy"], mpy))
    r["sum"] = r.get("sum", "")[:100]
    return r


def _file_ref(x):
    return isinstance(x, list) and len(x) == 2 and type(x[0]) is int and 0 <= x[0] and _hex_ok(x[1], 64)


def on_release(app, msg):
    """<base>/ota/release arrived (retained: at every connect, and when a new one is published)."""
    app.ota_dirty = True
    app.ota_note = ""
    if not msg:
        app.ota_release = None  # removed from the broker
        return
    key = key_of(app)
    if key is None:
        app.ota_release = None
        return  # note() says updates are off
    try:
        app.ota_release = check_release(msg, key, app.node_id, mpy_version())
    except Refused as e:
        app.ota_release = None
        _said(app, "A release on the broker was refused: %s. Nothing was installed." % e)


# --- the install --------------------------------------------------------------------------------
def install(app):
    """Install the release on the broker (HA's Install, or tools/ota.py --install)."""
    try:
        if app.ota_job is not None or app.ota_start is not None:
            raise Refused("an install is already running")
        if key_of(app) is None:
            raise Refused(OFF)
        r = app.ota_release
        if r is None:
            raise Refused("no valid release is on the broker (make ota publishes one)")
        if loader.slot not in loader.SLOTS:
            raise Refused("this app does not run from an app slot: install it once with make deploy")
        if loader.trial is not None:
            raise Refused("version %s is still on probation" % installed(app))
        if not app.mqtt.connected:
            raise Refused("not connected to the broker")
    except Refused as e:
        return _said(app, "Install refused: %s" % e)
    # The next housekeeping step starts it (App.start_install), once this module and commands.py
    # are out of memory: the install's code then goes into a heap without their holes.
    app.ota_start = r
    app.ota_pct = 0
    app.ota_note = ""
    loader.failed = None  # a new attempt: the last rollback is history
    log.info("update: installing version %s" % r["v"])
