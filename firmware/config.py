# Load and validate config.json (+ the git-ignored secrets.json overlay).
# Shared by the firmware (boot) and the host tools (`make config`), so a config that the host
# accepts is exactly one the device accepts. Pure: no hardware, runs on CPython and MicroPython.
import json
import os

# A real config.json is about 1 KB; values nest two levels ({"section": {"setting": value}}), a
# wrong-type value (a list, an object) one or two more, for a message that names the setting.
MAX_BYTES = 8192
MAX_DEPTH = 4

SECRET_KEYS = (("wifi", "password"), ("mqtt", "password"), ("ota", "key"))

# name: (default, kind, lo, hi). kind: 'int', 'bool', 'str', 'str?' (string or null).
SCHEMA = {
    "device_name": ("Vue Utility Connect", "str", 1, 64),
    "wifi": {
        "ssid": (None, "str?", 1, 32),
        "password": (None, "str?", 0, 64),
        # Peers traced hourly reboots to Wi-Fi power save; mains powered, so off by default.
        "power_save": (False, "bool", 0, 0),
        "hostname": ("vue-utility", "str", 1, 32),
    },
    "mqtt": {
        "host": (None, "str?", 1, 253),
        "port": (0, "int", 0, 65535),  # 0: 1883, or 8883 with TLS
        "user": (None, "str?", 0, 128),
        "password": (None, "str?", 0, 128),
        "tls": (False, "bool", 0, 0),
        # The CA certificate(s) that signed the broker's certificate: a .pem/.crt/.der file beside
        # config.json (`make config` copies it). With it the broker must prove it is mqtt.host;
        # without it TLS is encrypted but unchecked (the log says so, once per boot).
        "ca_file": (None, "str?", 5, 64),
        "client_id": (None, "str?", 1, 64),  # default: vue-utility-<MGM MAC>
        "base_topic": (None, "str?", 1, 100),  # default: vue_utility/<device id>
        "discovery_prefix": ("homeassistant", "str", 1, 100),
        "keepalive_s": (60, "int", 10, 600),
    },
    "meter": {
        "poll_interval_s": (30, "int", 5, 300),
        "startup_delay_s": (10, "int", 0, 60),
        # Readings from the MGM111's own log lines too (loglevel 20): for MGM v4/v6, whose answers
        # to polls nobody can decode yet. Also a switch in HA.
        "mgm_log": (False, "bool", 0, 0),
    },
    "reporting": {
        # Publish power when it changed by at least this many W (0: every reading) ...
        "power_min_change_w": (0, "int", 0, 100000),
        # ... or when this long has passed since the last power message (0: no forced repeat).
        "power_max_interval_s": (0, "int", 0, 3600),
        # Energy totals at most this often (0: every reading).
        "energy_interval_s": (0, "int", 0, 3600),
    },
    "uart": {
        "rx": (21, "int", 0, 39),
        "tx": (22, "int", 0, 39),
        "baud": (115200, "int", 9600, 921600),
        "device": (None, "str?", 1, 200),  # unix port only: the pty of the simulated MGM111
    },
    "leds": {
        "power": (25, "int", -1, 39),  # -1: no LED
        "link": (32, "int", -1, 39),
        "wifi": (33, "int", -1, 39),
    },
    "ota": {
        # Updates over the air (tools/ota.py): 32 bytes as 64 hex digits, shared with the user's
        # computer; a release is installed only when signed with it. In secrets.json; none: OTA off.
        "key": (None, "str?", 64, 64),
    },
    "debug": {
        "raw_frames": (False, "bool", 0, 0),  # publish every raw reading payload (reverse engineering)
        "time_scale": (1, "int", 1, 1000),  # tests only: run the meter session's timers N times faster
    },
}


def defaults(schema=SCHEMA):
    out = {}
    for k, v in schema.items():
        out[k] = defaults(v) if isinstance(v, dict) else v[0]
    return out


def _merge(base, over):
    # Unknown keys are kept so validate() can name them (a typo must not be silently ignored).
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def _check(name, value, spec, errors):
    default, kind, lo, hi = spec
    if kind == "bool":
        if not isinstance(value, bool):
            errors.append("%s: must be true or false, got %s" % (name, _show(name, value)))
        return
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append("%s: must be a whole number, got %s" % (name, _show(name, value)))
        elif not lo <= value <= hi:
            errors.append("%s: must be between %d and %d, got %d" % (name, lo, hi, value))
        return
    if value is None and kind == "str?":
        return
    if not isinstance(value, str):
        errors.append("%s: must be text, got %s" % (name, _show(name, value)))
    elif not lo <= len(value) <= hi:
        errors.append("%s: must be %d to %d characters long" % (name, lo, hi))


def _show(name, value):
    for sec, key in SECRET_KEYS:
        if name == sec + "." + key:
            return "a value of another type (not shown: it is a secret)"
    return json.dumps(value)


def _walk(cfg, schema, prefix, errors):
    for key, value in cfg.items():
        name = prefix + key
        spec = schema.get(key)
        if spec is None:
            errors.append("%s: unknown setting (misspelt?)" % name)
        elif isinstance(spec, dict):
            if isinstance(value, dict):
                _walk(value, spec, name + ".", errors)
            else:
                errors.append("%s: must be a section {...}" % name)
        else:
            _check(name, value, spec, errors)


def validate(cfg, board="esp32"):
    """Return a list of plain-words errors; empty when cfg (already merged with defaults) is usable."""
    errors = []
    if not isinstance(cfg, dict):
        return ["the file must hold one JSON object {...}"]
    _walk(cfg, SCHEMA, "", errors)
    if errors:
        return errors
    if not cfg["mqtt"]["host"]:
        errors.append("mqtt.host: required (the address of your MQTT broker)")
    if board == "esp32" and not cfg["wifi"]["ssid"]:
        errors.append("wifi.ssid: required (the name of your Wi-Fi network)")
    if board == "unix" and not cfg["uart"]["device"]:
        errors.append("uart.device: required on the unix port (the simulated MGM111's pty)")
    ca = cfg["mqtt"]["ca_file"]
    if ca:
        if not cfg["mqtt"]["tls"]:
            errors.append("mqtt.ca_file: set, but mqtt.tls is false: turn TLS on (port 8883) or "
                          "remove ca_file")
        if not _plain_name(ca) or ca[-4:].lower() not in (".pem", ".crt", ".cer", ".der"):
            errors.append("mqtt.ca_file: a file name beside config.json ending in .pem, .crt, .cer "
                          "or .der (letters, digits, '-', '_', '.'), got %s" % json.dumps(ca))
    key = cfg["ota"]["key"]
    if key and not _hex(key):
        errors.append("ota.key: must be 64 hex digits (make ota-key writes one)")
    for topic in ("base_topic", "discovery_prefix"):
        t = cfg["mqtt"][topic]
        if t and ("#" in t or "+" in t or t.startswith("/") or t.endswith("/")):
            errors.append("mqtt.%s: no '#', '+' or leading/trailing '/' allowed" % topic)
    return errors


def _plain_name(name):
    if name[0] == ".":
        return False
    for c in name:
        if not (c.isalpha() or c.isdigit() or c in "-_.") or ord(c) > 127:
            return False
    return True


def _hex(text):
    for c in text:
        if c not in "0123456789abcdefABCDEF":
            return False
    return True


def _depth(text):
    """How deeply {...} and [...] nest in JSON text (outside strings)."""
    deepest = depth = 0
    in_str = esc = False
    for c in text:
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{" or c == "[":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif c == "}" or c == "]":
            depth -= 1
    return deepest


def _read_json(path, errors, required):
    try:
        size = os.stat(path)[6]
    except OSError:
        if required:
            errors.append("%s: file not found" % path)
        return None
    # Checked before reading: a wrong file (a log, a firmware image) must not exhaust the heap.
    if size > MAX_BYTES:
        errors.append("%s: %d bytes is far too large for a configuration file (at most %d; a "
                      "real one is about 1 KB): is it the right file?" % (path, size, MAX_BYTES))
        return None
    try:
        with open(path) as f:
            text = f.read(MAX_BYTES + 1)
    except OSError as e:
        errors.append("%s: cannot be read (%s)" % (path, e))
        return None
    except (ValueError, UnicodeError):
        errors.append("%s: not text (is it the right file?)" % path)
        return None
    if len(text) > MAX_BYTES:  # grew since stat, or not a regular file
        errors.append("%s: far too large for a configuration file (at most %d bytes)" % (path, MAX_BYTES))
        return None
    if _depth(text) > MAX_DEPTH:
        errors.append("%s: {...} or [...] nested more than %d deep; settings are at most two levels: "
                      '{"section": {"setting": value}}' % (path, MAX_DEPTH))
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        # MicroPython's message is terse; CPython's names the line. Either way, say which file.
        errors.append("%s: not valid JSON (%s)" % (path, e))
        return None
    except (MemoryError, RuntimeError) as e:  # RuntimeError: CPython's RecursionError
        errors.append("%s: too large or too deeply nested to read (%s)" % (path, type(e).__name__))
        return None
    if not isinstance(data, dict):
        errors.append("%s: must hold one JSON object {...}" % path)
        return None
    return data


def load_file(path="config.json", secrets_path=None, board="esp32"):
    """-> (cfg, errors). cfg is defaults + file + secrets overlay; errors empty when usable."""
    errors = []
    cfg = defaults()
    data = _read_json(path, errors, True)
    if data is not None:
        _merge(cfg, data)
    if secrets_path:
        secrets = _read_json(secrets_path, errors, False)
        if secrets is not None:
            _merge(cfg, secrets)
    if not errors:
        errors = validate(cfg, board)
    ca = None if errors else cfg["mqtt"]["ca_file"]  # a valid cfg has its sections: not before
    if ca:
        # Beside secrets.json: the top of the device's file system, also for a configuration an
        # update brought (probation); on the host, the firmware/ folder.
        d = (secrets_path or path).rpartition("/")[0]
        import sys
        try:
            import ca_certs
        except ImportError:  # the host tools import this file from firmware/, then take that off sys.path
            sys.path.insert(0, __file__.rpartition("/")[0] or ".")
            try:
                import ca_certs
            finally:
                del sys.path[0]
        try:
            ca_certs.read(d + "/" + ca if d else ca)
        except ValueError as e:
            errors.append(str(e))
        sys.modules.pop("ca_certs", None)  # the device loads it again at each TLS connect
    return cfg, errors


def redacted(cfg):
    """A copy safe to print: passwords replaced."""
    out = json.loads(json.dumps(cfg))
    for sec, key in SECRET_KEYS:
        if out.get(sec, {}).get(key):
            out[sec][key] = "***"
    return out
