# Home Assistant discovery payloads as HA reads them. Runs under CPython and MicroPython.
import json

import discovery

DEV = discovery.device_info("vue_utility_ab12", "Vue", "0.1.0", 8, "88:77:66:55:44:33:22:11")


def announce(has=()):
    out = {}
    for e in discovery.entities(set(has)):
        out[e[1]] = (discovery.config_topic("homeassistant", "vue_utility_ab12", e),
                     json.loads(discovery.payload(e, "vue_utility/ab12", "vue_utility_ab12", DEV, 120)))
    return out


def test_energy_dashboard_ready_entities():
    a = announce(["export"])
    t, p = a["energy_in"]
    assert t == "homeassistant/sensor/vue_utility_ab12/energy_in/config"
    assert (p["device_class"], p["unit_of_measurement"], p["state_class"]) == ("energy", "Wh", "total_increasing")
    assert a["energy_out"][1]["state_class"] == "total_increasing"
    assert a["energy_net"][1]["state_class"] == "total"
    pw = a["power"][1]
    assert (pw["device_class"], pw["unit_of_measurement"], pw["state_class"]) == ("power", "W", "measurement")
    for k in ("power", "energy_in", "energy_out"):
        assert a[k][1]["expire_after"] == 120
        assert a[k][1]["availability_topic"] == "vue_utility/ab12/status"


def test_returned_energy_only_announced_once_the_meter_has_it():
    assert "energy_out" not in announce()
    assert "energy_out" in announce(["export"])


def test_unique_ids_and_one_device():
    a = announce(["export"])
    ids = [p["unique_id"] for t, p in a.values()]
    assert len(ids) == len(set(ids))
    for t, p in a.values():
        assert p["device"]["identifiers"] == ["vue_utility_ab12"]
    assert a["power"][1]["device"]["hw_version"] == "MGM111 firmware v8"


def test_controls_have_command_topics():
    a = announce()
    assert a["rejoin"][1]["command_topic"] == "vue_utility/ab12/cmd/rejoin"
    assert a["restart"][1]["device_class"] == "restart"
    n = a["poll_interval"][1]
    assert (n["min"], n["max"], n["command_topic"]) == (5, 300, "vue_utility/ab12/cmd/poll_interval")
    assert a["raw_frames"][0].startswith("homeassistant/switch/")
    for k in ("link", "mgm_version", "rssi", "uptime", "free_mem", "readings", "errors", "last_error"):
        assert a[k][1]["entity_category"] == "diagnostic", k
