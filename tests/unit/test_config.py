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
