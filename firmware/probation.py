# The way back from an update over the air (ota_job.py stages it, switch() here boots it next),
# stable beside loader.py: never replaced over the air, so it does not depend on the code being tried.
# app.json while an update is on probation: {"active": new, "trial": {"from": old, "boots": n}};
# after a rollback: {"active": old, "failed": {"version": v, "why": words}}. The state of the boot
# (loader.trial, loader.failed) lives in loader; this module is imported only when it has work.
import json
import os

import loader


def _pointer():
    try:
        p = loader._read_json(loader.POINTER)
    except Exception:
        return {}
    return p if isinstance(p, dict) else {}


def _write_pointer(p):
    # A temporary name, then one rename: a power cut leaves the old pointer or the new one.
    with open(loader.POINTER + ".tmp", "w") as f:
        f.write(json.dumps(p))
    os.rename(loader.POINTER + ".tmp", loader.POINTER)


def at_boot():
    """Before the slot is chosen: the first boot of an app on probation is counted; a second boot
    still unconfirmed means it failed (it crashed, hung until the watchdog reset the board, or lost
    power before proving itself): the previous slot comes back."""
    p = _pointer()
    loader.failed = p.get("failed")
    t = p.get("trial")
    if not isinstance(t, dict):
        return
    if t.get("boots", 0) < 1:
        t["boots"] = 1
        _write_pointer(p)
        t = dict(t)
        t["slot"] = p.get("active")  # loader.boot: on probation only if this slot is the one booted
        loader.trial = t
        return
    loader.trial = t
    rollback("it restarted before it proved itself healthy (a crash, a watchdog reset or a power cut)")


def switch(new, previous):
    """After an update is staged whole in slot `new`: boot it next, on probation, with `previous`
    (the running slot) to go back to."""
    _write_pointer({"active": new, "trial": {"from": previous, "boots": 0}})


def rollback(why):
    """The app on probation failed: the previous slot boots next, and the next app says why.
    The caller restarts the board."""
    p = _pointer()
    t = p.get("trial") or loader.trial or {}
    bad = p.get("active")
    try:
        v = loader._read_json(bad + "/" + loader.MANIFEST).get("version")
    except Exception:
        v = None
    loader.failed = {"version": v, "why": why}
    _write_pointer({"active": t.get("from") or bad, "failed": loader.failed})
    loader.trial = None
    print("boot: the update to version %s failed: %s; going back to %s" % (v, why, t.get("from")))


def confirm():
    """The app on probation is healthy: it stays. A configuration that came with it (in its
    slot, used only on probation) becomes the configuration from now on."""
    if loader.trial is None:
        return
    staged = loader.slot + "/config.json"
    if loader._exists(staged):
        with open(staged) as src, open("config.json.tmp", "w") as dst:
            dst.write(src.read())
        os.rename("config.json.tmp", "config.json")
        os.remove(staged)
    _write_pointer({"active": loader.slot})
    loader.trial = loader.failed = None


def config_path():
    """The configuration to boot with: on probation, the one the update brought, if any."""
    s = loader.slot
    if loader.trial is not None and s and loader._exists(s + "/config.json"):
        return s + "/config.json"
    return "config.json"
