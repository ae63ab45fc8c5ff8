# Home Assistant MQTT discovery, built from one table of entities. Pure: tested on the host.
import json

# (component, object_id, name, state topic suffix, value template or None, extra settings)
# Extras: dc device_class, unit, sc state_class, cat entity_category, icon, exp (uses expire_after),
# cmd (command topic suffix), needs (only announced once the meter provides that value).
ENTITIES = (
    ("sensor", "power", "Power", "power", None,
     {"dc": "power", "unit": "W", "sc": "measurement", "exp": 1}),
    ("sensor", "energy_in", "Energy consumed", "energy/in", None,
     {"dc": "energy", "unit": "Wh", "sc": "total_increasing", "exp": 1}),
    ("sensor", "energy_out", "Energy returned", "energy/out", None,
     {"dc": "energy", "unit": "Wh", "sc": "total_increasing", "exp": 1, "needs": "export"}),
    ("sensor", "energy_net", "Energy net", "energy/net", None,
     {"dc": "energy", "unit": "Wh", "sc": "total", "exp": 1, "needs": "export"}),
    ("sensor", "link", "Meter link", "diag", "{{ value_json.link }}",
     {"cat": "diagnostic", "icon": "mdi:zigbee"}),
    ("sensor", "link_text", "Meter link details", "diag", "{{ value_json.link_text }}",
     {"cat": "diagnostic", "icon": "mdi:information-outline"}),
    ("sensor", "last_error", "Last error", "diag", "{{ value_json.last_error }}",
     {"cat": "diagnostic", "icon": "mdi:alert-circle-outline"}),
    ("sensor", "mgm_version", "MGM firmware version", "diag", "{{ value_json.mgm_version }}",
     {"cat": "diagnostic", "icon": "mdi:chip"}),
    ("sensor", "mgm_mac", "MGM MAC", "diag", "{{ value_json.mgm_mac }}",
     {"cat": "diagnostic", "icon": "mdi:identifier"}),
    ("sensor", "rssi", "Wi-Fi signal", "diag", "{{ value_json.rssi }}",
     {"cat": "diagnostic", "dc": "signal_strength", "unit": "dBm", "sc": "measurement"}),
    ("sensor", "uptime", "Uptime", "diag", "{{ value_json.uptime_s }}",
     {"cat": "diagnostic", "dc": "duration", "unit": "s", "sc": "total_increasing"}),
    ("sensor", "free_mem", "Free memory", "diag", "{{ value_json.free_mem }}",
     {"cat": "diagnostic", "dc": "data_size", "unit": "B", "sc": "measurement"}),
    ("sensor", "readings", "Readings", "diag", "{{ value_json.readings }}",
     {"cat": "diagnostic", "sc": "total_increasing", "icon": "mdi:counter"}),
    ("sensor", "errors", "Errors", "diag", "{{ value_json.errors }}",
     {"cat": "diagnostic", "sc": "total_increasing", "icon": "mdi:alert"}),
    ("button", "rejoin", "Re-join meter", None, None,
     {"cat": "config", "cmd": "cmd/rejoin", "icon": "mdi:link-variant"}),
    ("button", "restart", "Restart", None, None,
     {"cat": "config", "cmd": "cmd/restart", "dc": "restart"}),
    ("number", "poll_interval", "Poll interval", "diag", "{{ value_json.poll_interval_s }}",
     {"cat": "config", "cmd": "cmd/poll_interval", "unit": "s", "min": 5, "max": 300}),
    ("switch", "raw_frames", "Publish raw frames", "diag", "{{ value_json.raw_frames }}",
     {"cat": "config", "cmd": "cmd/raw_frames", "icon": "mdi:bug"}),
)


def config_topic(prefix, node_id, entity):
    return "%s/%s/%s/%s/config" % (prefix, entity[0], node_id, entity[1])


def payload(entity, base, node_id, device, expire_after):
    """The discovery JSON of one entity (a str)."""
    comp, oid, name, state, tmpl, x = entity
    d = {
        "name": name,
        "unique_id": "%s_%s" % (node_id, oid),
        "availability_topic": base + "/status",
        "device": device,
    }
    if state:
        d["state_topic"] = base + "/" + state
    if tmpl:
        d["value_template"] = tmpl
    if "dc" in x:
        d["device_class"] = x["dc"]
    if "unit" in x:
        d["unit_of_measurement"] = x["unit"]
    if "sc" in x:
        d["state_class"] = x["sc"]
    if "cat" in x:
        d["entity_category"] = x["cat"]
    if "icon" in x:
        d["icon"] = x["icon"]
    if x.get("exp"):
        # A frozen value would lie: after three missed updates HA shows "unavailable" instead.
        d["expire_after"] = expire_after
    if "cmd" in x:
        d["command_topic"] = base + "/" + x["cmd"]
    if comp == "number":
        d.update({"min": x["min"], "max": x["max"], "step": 1, "mode": "box"})
    if comp == "switch":
        d.update({"payload_on": "ON", "payload_off": "OFF"})
    return json.dumps(d)


def device_info(node_id, name, sw_version, mgm_version, mgm_mac):
    d = {
        "identifiers": [node_id],
        "name": name,
        "manufacturer": "Emporia (community firmware)",
        "model": "Vue Utility Connect",
        "sw_version": sw_version,
    }
    if mgm_version is not None:
        d["hw_version"] = "MGM111 firmware v%s" % mgm_version
    if mgm_mac:
        d["connections"] = [["zigbee", mgm_mac]]
    return d


def entities(has):
    """The entities to announce now; `has` is a set-like of values the meter provides."""
    return [e for e in ENTITIES if e[5].get("needs") is None or e[5]["needs"] in has]
