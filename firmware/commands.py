# Commands from Home Assistant (<base>/cmd/*): a button press or a setting; never a retained
# message, never a flood. Commands are rare, so this code is in memory only while they come:
# App.on_message imports it, the next housekeeping step drops it again. Its state (the last
# re-join, the last save, topics being cleared) lives on the App.
import time

import log

REJOIN_EVERY_MS = 60000  # a re-join disturbs the meter's Zigbee link: at most one a minute
SETTINGS_SAVE_MS = 10000  # settings reach flash at most this often (a flood must not wear it)


def handle(app, topic, cmd, msg, retain):
    """One message on <base>/cmd/<cmd>."""
    if retain:
        return _retained(app, topic, cmd, msg)
    if not msg and topic in app._clearing:
        app._clearing = tuple(t for t in app._clearing if t != topic)
        return
    text = _text(msg)
    if cmd == "rejoin" or cmd == "restart":
        if text != "PRESS":
            return _refuse(app, cmd, msg, "expected PRESS (what Home Assistant's button sends)")
        now = time.ticks_ms()
        if cmd == "restart":
            if app.restart_at is not None:
                return _refuse(app, cmd, msg, "a restart is already under way")
            log.info("command: restart")
            app.restart_at = time.ticks_add(now, 1000)
            return
        last = app._rejoin_ms
        if last is not None and 0 <= time.ticks_diff(now, last) < REJOIN_EVERY_MS:
            return _refuse(app, cmd, msg, "too soon: at most one re-join a minute (the last was %d s ago)"
                           % (time.ticks_diff(now, last) // 1000))
        app._rejoin_ms = now
        log.info("command: re-join the meter")
        app.meter.rejoin_requested = True
    elif cmd == "poll_interval":
        v = whole(text, 5, 300)
        if v is None:
            return _refuse(app, cmd, msg, "expected a whole number of seconds from 5 to 300")
        log.info("command: poll interval %d s" % v)
        if v != app.meter.poll_s:
            app.meter.poll_s = v
            _settings_changed(app)
    elif cmd == "raw_frames":
        if text not in ("ON", "OFF"):
            return _refuse(app, cmd, msg, "expected ON or OFF")
        log.info("command: raw frames %s" % text)
        if app.raw_frames != (text == "ON"):
            app.raw_frames = text == "ON"
            _settings_changed(app)
    elif cmd == "mgm_log":
        if text not in ("ON", "OFF"):
            return _refuse(app, cmd, msg, "expected ON or OFF")
        log.info("command: MGM log %s" % text)
        if app.meter.mgm_log != (text == "ON"):
            app.meter.set_mgm_log(text == "ON")
            _settings_changed(app)
    elif cmd == "update":
        if text != "install":
            return _refuse(app, cmd, msg, "expected install (what Home Assistant's update entity sends)")
        log.info("command: install the update on the broker")
        app._ota().install(app)
    else:
        _refuse(app, cmd, msg, "unknown command: expected one of rejoin, restart, poll_interval, raw_frames, "
                               "mgm_log, update")


def _retained(app, topic, cmd, msg):
    if not msg:
        return  # an empty retained message deletes one: nothing to do
    _refuse(app, cmd, msg, "it is a retained message (published with retain, e.g. mosquitto_pub -r or an "
                           "automation): commands act only when sent, never at connect; removed it from the broker")
    # Else it comes back at every connect. Its deletion reaches us as an empty message: no command.
    app.mqtt.publish(topic, "", True)
    app._clearing = app._clearing[-7:] + (topic,)


def _settings_changed(app):
    app.diag_due = True
    now = time.ticks_ms()
    last = app._settings_saved_ms
    if last is None or not 0 <= time.ticks_diff(now, last) < SETTINGS_SAVE_MS:
        app._settings_saved_ms = now
        app._save_state()
    else:
        app.state_dirty = True  # in effect now; on flash with the next periodic save or at shutdown


def _text(msg):
    """A command payload as text, or None: commands are short words and numbers."""
    if len(msg) > 32:
        return None
    try:
        return bytes(msg).decode()
    except UnicodeError:
        return None


def whole(text, lo, hi):
    """A whole number from lo to hi ("60", or "60.0" as some senders write it), else None:
    never float() (inf, nan, 1e999) and never int() of an unbounded string."""
    if text is None:
        return None
    t = text.strip()
    dot = t.find(".")
    if dot >= 0:
        if t[dot + 1:].strip("0"):
            return None
        t = t[:dot]
    if not 0 < len(t) <= 3:
        return None
    for ch in t:
        if ch not in "0123456789":
            return None
    v = int(t)
    return v if lo <= v <= hi else None


def _refuse(app, cmd, msg, why):
    # Shown short and escaped (a payload is anyone's bytes); logged rate-limited, always counted.
    shown = "<%d bytes>" % len(msg)
    if len(msg) <= 40:
        try:
            shown = repr(bytes(msg).decode())
        except UnicodeError:
            shown = "<%d bytes, not text>" % len(msg)
    app.mqtt.refused("refused command %s=%s: %s" % (cmd if len(cmd) <= 40 else cmd[:40] + "...", shown, why))
