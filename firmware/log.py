# Console log with uptime stamps. Keeps the last warning/error for the MQTT "last error" sensor.
# Callers never pass secrets here: the install code and passwords are not formatted anywhere.
import time

_t0 = time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.time() * 1000)
last_error = ""
last_error_ms = None  # ticks_ms of last_error: HA shows when it happened
counts = {"warning": 0, "error": 0}
listener = None  # optional callable(level, text), e.g. to mark the last_error as changed


def _uptime_s():
    if hasattr(time, "ticks_ms"):
        return time.ticks_diff(time.ticks_ms(), _t0) / 1000
    return time.time() - _t0 / 1000


def _emit(level, text):
    global last_error, last_error_ms
    print("[%9.3f] %-5s %s" % (_uptime_s(), level, text))
    if level in ("warn", "error"):
        last_error = text
        last_error_ms = time.ticks_ms() if hasattr(time, "ticks_ms") else int(time.time() * 1000)
        counts["error" if level == "error" else "warning"] += 1
        if listener:
            listener(level, text)


def info(text):
    _emit("info", text)


def warn(text):
    _emit("warn", text)


def error(text):
    _emit("error", text)
