# Home Assistant discovery payloads as HA reads them. Runs under CPython and MicroPython.
import json

import discovery

# HA's abbreviations (homeassistant/components/mqtt/abbreviations.py) for the keys we may send;
# expanding them here is what HA does before it validates a payload.
ABBR = {"~": "~", "name": "name", "uniq_id": "unique_id", "avty_t": "availability_topic", "dev": "device",
        "origin": "origin", "stat_t": "state_topic", "val_tpl": "value_template",
        "dev_cla": "device_class", "unit_of_meas": "unit_of_measurement", "stat_cla": "state_class",
        "ent_cat": "entity_category", "ic": "icon", "ops": "options", "exp_aft": "expire_after",
        "cmd_t": "command_topic", "min": "min", "max": "max", "step": "step", "mode": "mode",
        "pl_on": "payload_on", "pl_off": "payload_off", "pl_prs": "payload_press",
        "pl_inst": "payload_install"}
DEV_ABBR = {"ids": "identifiers", "name": "name", "mf": "manufacturer", "mdl": "model", "sw": "sw_version",
            "hw_version": "hw_version", "cns": "connections"}
# What each HA MQTT platform accepts among those keys (HA's platform schemas).
COMMON = {"~", "name", "unique_id", "availability_topic", "device", "origin", "entity_category", "icon",
          "device_class"}
ALLOWED = {
    "sensor": COMMON | {"state_topic", "value_template", "unit_of_measurement", "state_class", "options",
                        "expire_after"},
    "button": COMMON | {"command_topic", "payload_press"},
    "number": COMMON | {"state_topic", "value_template", "command_topic", "unit_of_measurement", "min",
                        "max", "step", "mode"},
    "switch": COMMON | {"state_topic", "value_template", "command_topic", "payload_on", "payload_off"},
    "update": COMMON | {"state_topic", "command_topic", "payload_install"},
}
NODE = "vue_utility_ab12"
BASE = "vue_utility/ab12"
DEV = discovery.device_json(NODE, "Vue", "0.1.0", 8, "88:77:66:55:44:33:22:11", "24:0a:c4:00:11:22")
ORIGIN = discovery.origin_json("0.1.0")


def expand(p):
    out = {}
    for k, v in p.items():
        assert k in ABBR, "key %r is not one HA knows" % k
        full = ABBR[k]
        if full == "device":
            v = dict((DEV_ABBR[dk], dv) for dk, dv in v.items())
        if isinstance(v, str) and full.endswith("_topic"):
            v = v.replace("~", p["~"], 1) if v.startswith("~") else v
        out[full] = v
    del out["~"]
    return out


def announce(export=False, exp=120):
    out = {}
    for e in discovery.entities(export):
        out[e[1]] = (discovery.config_topic("homeassistant", NODE, e),
                     expand(json.loads(discovery.payload(e, BASE, NODE, DEV, exp, ORIGIN))))
    return out


def test_every_key_is_one_the_platform_accepts():
    a = announce(True)
    for key, (topic, p) in a.items():
        comp = topic.split("/")[1]
        extra = set(p) - ALLOWED[comp]
        assert not extra, "%s: %s" % (key, extra)
        assert "object_id" not in p  # HA stops honouring it in 2026.4: ids come from device + name


def test_energy_dashboard_ready_entities():
    a = announce(True)
    t, p = a["energy_in"]
    assert t == "homeassistant/sensor/vue_utility_ab12/energy_in/config"
    assert (p["device_class"], p["unit_of_measurement"], p["state_class"]) == ("energy", "Wh", "total_increasing")
    assert p["state_topic"] == "vue_utility/ab12/energy/in"
    assert a["energy_out"][1]["state_class"] == "total_increasing"
    assert a["energy_net"][1]["state_class"] == "total"
    pw = a["power"][1]
    assert (pw["device_class"], pw["unit_of_measurement"], pw["state_class"]) == ("power", "W", "measurement")
    for k in ("power", "power_import", "power_export", "energy_in", "energy_out"):
        assert a[k][1]["expire_after"] == 120
        assert a[k][1]["availability_topic"] == "vue_utility/ab12/status"


def test_import_and_export_power_read_the_one_power_topic():
    a = announce()
    for k in ("power_import", "power_export"):
        p = a[k][1]
        assert p["state_topic"] == "vue_utility/ab12/power"
        assert (p["device_class"], p["unit_of_measurement"], p["state_class"]) == ("power", "W", "measurement")


def test_returned_energy_only_announced_once_the_meter_has_it():
    assert "energy_out" not in announce()
    assert "energy_out" in announce(True)


def test_only_value_entities_follow_the_poll_interval():
    keys = [e[1] for e in discovery.entities(True, discovery.EXP)]
    assert set(keys) == {"power", "power_import", "power_export", "energy_in", "energy_out", "energy_net"}
    keys = [e[1] for e in discovery.entities(True, discovery.EXPORT)]
    assert set(keys) == {"energy_out", "energy_net"}


def test_unique_ids_one_device_and_its_connections():
    a = announce(True)
    ids = [p["unique_id"] for t, p in a.values()]
    assert len(ids) == len(set(ids))
    for t, p in a.values():
        assert p["device"]["identifiers"] == [NODE]
        assert p["origin"]["name"] == "vue-utility" and p["origin"]["sw_version"] == "0.1.0"
    d = a["power"][1]["device"]
    assert d["hw_version"] == "MGM111 firmware v8"
    assert ["mac", "24:0a:c4:00:11:22"] in d["connections"]
    assert ["zigbee", "88:77:66:55:44:33:22:11"] in d["connections"]


def test_link_is_an_enum_of_every_state_the_firmware_reports():
    import meter
    p = announce()["link"][1]
    assert p["device_class"] == "enum"
    assert sorted(p["options"]) == sorted(meter.STATES)


def test_diagnostics_read_well():
    a = announce()
    for k in ("link", "link_text", "last_error", "last_error_time", "mgm_version", "rssi", "ip", "ssid",
              "uptime", "free_mem", "readings", "errors", "rejected", "joins", "mgm_errors"):
        assert a[k][1]["entity_category"] == "diagnostic", k
    assert a["last_error_time"][1]["device_class"] == "timestamp"
    for k in ("rejected", "joins", "mgm_errors"):
        assert a[k][1]["state_class"] == "total_increasing"


def test_controls_have_command_topics():
    a = announce()
    assert a["rejoin"][1]["command_topic"] == "vue_utility/ab12/cmd/rejoin"
    assert a["rejoin"][1]["payload_press"] == "PRESS"
    assert a["restart"][1]["device_class"] == "restart"
    n = a["poll_interval"][1]
    assert (n["min"], n["max"], n["command_topic"]) == (5, 300, "vue_utility/ab12/cmd/poll_interval")
    assert a["raw_frames"][0].startswith("homeassistant/switch/")
