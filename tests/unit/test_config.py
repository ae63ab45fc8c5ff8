# config.json validation: the same code on the device (safe mode) and the host (`make config`).
import json
import os

import config

HERE = os.getcwd()


def good():
    c = config.defaults()
    c["wifi"]["ssid"] = "home"
    c["mqtt"]["host"] = "192.168.1.10"
    return c


def test_defaults_follow_protocol_md():
    c = config.defaults()
    assert c["meter"]["poll_interval_s"] == 30
    assert (c["uart"]["rx"], c["uart"]["tx"], c["uart"]["baud"]) == (21, 22, 115200)
    assert (c["leds"]["power"], c["leds"]["link"], c["leds"]["wifi"]) == (25, 32, 33)
    assert c["wifi"]["power_save"] is False


def test_complete_config_is_valid():
    assert config.validate(good()) == []


def test_shipped_config_asks_for_wifi_and_broker():
    cfg, errors = config.load_file("firmware/config.json")
    assert len(errors) == 2
    assert any(e.startswith("mqtt.host: required") for e in errors)
    assert any(e.startswith("wifi.ssid: required") for e in errors)


def test_poll_interval_bounds():
    for v, ok in ((4, False), (5, True), (300, True), (301, False)):
        c = good()
        c["meter"]["poll_interval_s"] = v
        errors = config.validate(c)
        assert (errors == []) == ok, (v, errors)
        if not ok:
            assert errors == ["meter.poll_interval_s: must be between 5 and 300, got %d" % v]


def test_typo_and_wrong_types_are_named():
    c = good()
    c["mqtt"]["hots"] = "x"
    c["mqtt"]["port"] = "1883"
    c["wifi"]["power_save"] = 1
    errors = config.validate(c)
    assert "mqtt.hots: unknown setting (misspelt?)" in errors
    assert 'mqtt.port: must be a whole number, got "1883"' in errors
    assert "wifi.power_save: must be true or false, got 1" in errors


def test_password_never_shown_in_errors():
    c = good()
    c["mqtt"]["password"] = 123456789
    errors = config.validate(c)
    assert len(errors) == 1 and "123456789" not in errors[0]


def test_secrets_overlay_and_redaction():
    with open("_t_config.json", "w") as f:
        f.write(json.dumps({"wifi": {"ssid": "home"}, "mqtt": {"host": "h", "user": "u"}}))
    with open("_t_secrets.json", "w") as f:
        f.write(json.dumps({"wifi": {"password": "wifipw"}, "mqtt": {"password": "mqttpw"}}))
    try:
        cfg, errors = config.load_file("_t_config.json", "_t_secrets.json")
        assert errors == []
        assert cfg["wifi"]["password"] == "wifipw" and cfg["mqtt"]["password"] == "mqttpw"
        shown = json.dumps(config.redacted(cfg))
        assert "wifipw" not in shown and "mqttpw" not in shown
    finally:
        os.remove("_t_config.json")
        os.remove("_t_secrets.json")


def test_missing_and_broken_files_give_a_message():
    cfg, errors = config.load_file("_no_such.json")
    assert errors == ["_no_such.json: file not found"]
    with open("_t_bad.json", "w") as f:
        f.write('{"wifi": {"ssid": "x",}')
    try:
        cfg, errors = config.load_file("_t_bad.json")
        assert len(errors) == 1 and errors[0].startswith("_t_bad.json: not valid JSON")
    finally:
        os.remove("_t_bad.json")


def test_missing_secrets_file_is_fine():
    cfg, errors = config.load_file("firmware/config.json", "_none_secrets.json")
    assert not any("_none_secrets" in e for e in errors)


def _errors_for(text, as_secrets=False):
    """load_file on a config (or secrets) file holding `text`; never raises."""
    name = "_t_limits.json"
    with open(name, "w") as f:
        f.write(text)
    try:
        if as_secrets:
            return config.load_file("firmware/config.json", name)[1]
        return config.load_file(name)[1]
    finally:
        os.remove(name)


def test_oversized_files_are_refused_in_words_before_reading():
    # A 300 KB file ran the device out of heap (MemoryError traceback) before it was refused.
    for size in (config.MAX_BYTES + 1, 300000):
        text = '{"device_name": "' + "x" * (size - 19) + '"}'
        assert len(text) == size
        for secrets in (False, True):
            errors = _errors_for(text, secrets)
            assert len(errors) >= 1 and "too large for a configuration file" in errors[-1], errors
    # Just under the limit: read, then judged on its content (device_name is too long).
    text = '{"device_name": "' + "x" * (config.MAX_BYTES - 40) + '"}'
    errors = _errors_for(text)
    assert any(e.startswith("device_name: must be 1 to 64 characters") for e in errors), errors


def test_deep_nesting_is_refused_in_words():
    # Inside the size limit; CPython's json raised RecursionError, MicroPython's dumps overflows.
    for depth in (config.MAX_DEPTH + 1, 50, 4000):
        for opener, closer in (("[", "]"), ('{"a":', "}")):
            body = opener * depth + "1" + closer * depth
            if len(body) > config.MAX_BYTES - 20:
                body = opener * (config.MAX_BYTES // (len(opener) + 1) - 10) + "1"  # unclosed too
            for text in ('{"mqtt": {"port": %s}}' % body, body):
                for secrets in (False, True):
                    errors = _errors_for(text, secrets)
                    assert len(errors) >= 1, text[:40]
                    assert "nested more than %d deep" % config.MAX_DEPTH in errors[-1], errors


def test_nesting_counts_only_outside_strings():
    # Brackets inside a value (a password, an SSID) are text, not nesting.
    pw = "[[[[[[{{{{{{\\\"]]"
    errors = _errors_for('{"wifi": {"ssid": "home", "password": "%s"}, "mqtt": {"host": "h"}}' % pw)
    assert errors == [], errors


def test_a_wrong_type_within_the_depth_limit_names_the_setting():
    errors = _errors_for('{"wifi": {"ssid": "home"}, "mqtt": {"host": "h", "port": [[1]]}}')
    assert errors == ["mqtt.port: must be a whole number, got [[1]]"], errors
