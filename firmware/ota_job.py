# The install of an update over the air (ota.py starts it; the protocol is in ota.py and
# docs/architecture.md): empty the slot not running, fetch the manifest and every file one chunk at
# a time, check sizes, sha256, paths, room and a brought config.json, write the manifest last and
# switch app.json (probation.switch). In memory only while an install runs: app.py drops it after.
import binascii
import gc
import hashlib
import json
import os
import sys
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

import loader
import log
import probation  # here, with this module: at the end of a download the heap is in pieces

CHUNK_WAIT_MS = 10000  # a chunk that has not come by then is asked for again ...
CHUNK_TRIES = 3  # ... this many times, then the install is given up
OFFLINE_MAX_MS = 120000  # the broker gone this long in the middle of an install: given up
FS_BLOCK = 4096  # the ESP32's littlefs block: every file takes whole blocks


class Refused(Exception):
    """The install cannot go on; its text says why, in words."""


def _hex_ok(s, n):
    if not isinstance(s, str) or len(s) != n:
        return False
    for c in s:
        if c not in "0123456789abcdef":
            return False
    return True


def _said(app, text, warn=True):
    app.ota_note = text
    app.ota_dirty = True
    (log.warn if warn else log.info)(text)


class Job:
    def __init__(self, app, rel):
        self.app = app
        self.rel = rel
        self.chunk = rel["chunk"]
        self.target = loader.SLOTS[1] if loader.slot == loader.SLOTS[0] else loader.SLOTS[0]
        self.prefix = app.base + "/ota/" + rel["rid"] + "/"
        self.want = None
        self.got = None
        self.done = 0
        self.total = 0  # known once the manifest is read: progress is reported from then on

    # While it runs, what the update entity and tools/ota.py are told comes from here: ota.py (the
    # idle texts) is not loaded beside this module at the install's heap peak.
    def state_json(self):
        app = self.app
        return json.dumps({"installed_version": loader.version or app.version, "latest_version": self.rel["v"],
                           "title": "vue-utility app", "release_summary": self.note(), "in_progress": True,
                           "update_percentage": app.ota_pct or 0})

    def device_json(self):
        app = self.app
        return json.dumps({"device": app.node_id, "version": loader.version or app.version, "mpy": self.rel.get("mpy"),
                           "ota": True, "trial": False, "busy": True, "failed": None, "note": self.note()})

    def note(self):
        return "Installing version %s: %d %%" % (self.rel["v"], self.app.ota_pct or 0)

    async def run(self):
        app = self.app
        try:
            await self._run()
        except Exception as e:  # Refused, a full flash (OSError), no memory: said, nothing switched
            if isinstance(e, Refused):
                why = str(e)
            elif isinstance(e, MemoryError):
                why = "out of memory"
            else:
                why = "%s: %s" % (type(e).__name__, e)
            _said(app, "Update failed: %s. Nothing was changed: version %s keeps running." % (
                why, loader.version or app.version))
            app.ota_job = None
            if self.want is not None and app.mqtt.connected:
                try:
                    app.mqtt.unsubscribe(self.want)
                except Exception:
                    pass
            self.want = None
            gc.collect()

    async def _run(self):
        app, rel, slot = self.app, self.rel, self.target
        await _clear(slot)
        new_manifest = slot + "/manifest.new"
        await self._fetch("m", rel["man"], new_manifest)
        m = _read_manifest(new_manifest, rel["v"])
        files = m["files"]
        m = None
        need = FS_BLOCK * 4
        total = self.done + (rel["cfg"][0] if rel.get("cfg") else 0)
        for path, size, _ in files:
            total += size
            need += (size // FS_BLOCK + 1) * FS_BLOCK
        free = _free(slot)
        if free is not None and free < need:
            raise Refused("not enough room on the flash: the release needs %d KB, %d KB are free" % (
                need // 1024, free // 1024))
        self.total = total
        for i in range(len(files)):
            path, size, sha = files[i]
            gc.collect()  # each chunk leaves ~0.3 KB of garbage: collected before it fragments
            _makedirs(slot, path)
            await self._fetch(str(i), [size, sha], slot + "/" + path)
        if rel.get("cfg"):
            staged = slot + "/config.json"
            await self._fetch("c", rel["cfg"], staged)
            _check_config(staged, app.board.NAME)
        # The manifest last: only now may the loader consider the slot whole; then one rename of
        # app.json switches to it (a power cut before it: the running app stays; after: the new one).
        os.rename(new_manifest, slot + "/manifest.json")
        probation.switch(slot, loader.slot)
        app.ota_pct = 100
        _said(app, "Version %s installed: restarting into it (on probation)" % rel["v"], False)
        app.ota_job = None
        app.restart_at = time.ticks_add(time.ticks_ms(), 1000)  # state and log go out first

    async def _fetch(self, fid, ref, path):
        size, sha = ref
        h = hashlib.sha256()
        n = (size + self.chunk - 1) // self.chunk
        with open(path, "wb") as f:
            for k in range(n):
                data = await self._take(fid, k)
                expect = self.chunk if k < n - 1 else size - self.chunk * (n - 1)
                if len(data) != expect:
                    raise Refused("%s: chunk %d has %d bytes instead of %d (the release on the broker "
                                  "changed or is damaged)" % (_name(fid, path), k, len(data), expect))
                f.write(data)
                h.update(data)
                self.done += expect
                self._progress()
                data = None
        if binascii.hexlify(h.digest()).decode() != sha:
            raise Refused("%s does not match its sha256 (a chunk was damaged or replaced)" % _name(fid, path))

    async def _take(self, fid, k):
        """One chunk: subscribe to its (retained) topic, wait for it, unsubscribe."""
        t = self.prefix + fid + "/" + str(k)
        mq = self.app.mqtt
        tries = 0
        while True:
            t0 = time.ticks_ms()
            while not mq.connected:
                if time.ticks_diff(time.ticks_ms(), t0) > OFFLINE_MAX_MS:
                    raise Refused("the broker was gone for %d s in the middle of the download"
                                  % (OFFLINE_MAX_MS // 1000))
                await asyncio.sleep_ms(100)
            self.got = None
            self.want = t
            mq.subscribe(t)
            t0 = time.ticks_ms()
            while self.got is None and mq.connected and time.ticks_diff(time.ticks_ms(), t0) < CHUNK_WAIT_MS:
                await asyncio.sleep_ms(5)
            data = self.got
            if data is not None or mq.connected:
                mq.unsubscribe(t)
            self.want = self.got = None
            if data is not None:
                return data
            if mq.connected:
                tries += 1
                if tries >= CHUNK_TRIES:
                    raise Refused("chunk %s/%d never came from the broker: is the release still there? "
                                  "(make ota publishes it again)" % (fid, k))

    def _progress(self):
        if not self.total:
            return
        pct = self.done * 100 // self.total
        app = self.app
        if pct >= (app.ota_pct or 0) + 5 or pct == 100:
            app.ota_pct = pct
            app.ota_dirty = True


def _name(fid, path):
    return "the manifest" if fid == "m" else "config.json" if fid == "c" else path.split("/", 1)[1]


def _read_manifest(path, version):
    """The downloaded manifest (its sha256 already checked) -> its fields, checked: every path
    stays inside the slot, and the app's entry point is there."""
    with open(path) as f:
        try:
            m = json.load(f)
        except ValueError:
            raise Refused("the manifest cannot be read")
    files = m.get("files") if isinstance(m, dict) else None
    if not isinstance(files, list) or not files:
        raise Refused("the manifest lists no files")
    if m.get("version") != version:
        raise Refused("the manifest is for version %s, the release says %s" % (m.get("version"), version))
    names = set()
    for e in files:
        if not (isinstance(e, list) and len(e) == 3 and _path_ok(e[0]) and type(e[1]) is int
                and e[1] >= 0 and _hex_ok(e[2], 64)):
            raise Refused("the manifest lists a file it may not: %s" % str(e)[:60])
        names.add(e[0])
    if "start.mpy" not in names and "start.py" not in names:
        raise Refused("the release has no start.mpy: it is not this app")
    return m


def _path_ok(p):
    # Relative, inside the slot, no surprises: letters, digits, _ - . and / between names.
    if not isinstance(p, str) or not 0 < len(p) <= 64 or p[0] in "/." or p.endswith("/"):
        return False
    for part in p.split("/"):
        if not part or part[0] == "." or part in ("manifest.json", "manifest.new", "config.json"):
            return False
    for c in p:
        if not (c.isalpha() or c.isdigit() or c in "_-./"):
            return False
    return True


def _check_config(path, board_name):
    gc.collect()
    import config
    try:
        _, errors = config.load_file(path, "secrets.json", board_name)
    finally:
        del sys.modules["config"]
    if errors:
        raise Refused("the config.json it brings cannot be used: %s" % "; ".join(errors)[:150])


async def _clear(slot):
    """Empty the slot that is not running, its manifest first (a half-cleared slot must never look
    whole to the loader), one file per step."""
    try:
        os.remove(slot + "/" + loader.MANIFEST)
    except OSError:
        pass
    await _rmtree(slot, False)
    try:
        os.mkdir(slot)
    except OSError:
        pass


async def _rmtree(path, remove_self=True):
    try:
        entries = [(e[0], e[1]) for e in os.ilistdir(path)]
    except OSError:
        return
    for name, kind in entries:
        p = path + "/" + name
        if kind == 0x4000:
            await _rmtree(p)
        else:
            os.remove(p)
        await asyncio.sleep_ms(0)
    if remove_self:
        os.rmdir(path)


def _makedirs(slot, path):
    d = slot
    for part in path.split("/")[:-1]:
        d += "/" + part
        try:
            os.mkdir(d)
        except OSError:
            pass


def _free(path):
    try:
        s = os.statvfs(path)
        return s[0] * s[4]  # f_bsize * f_bavail
    except (OSError, AttributeError):
        return None
