# Home Assistant MQTT discovery, built from one table of entities. Pure: tested on the host.
# Payloads use HA's documented abbreviations (homeassistant/components/mqtt/abbreviations.py) and
# the "~" base topic: they are the device's heap peak while announcing, and this roughly halves them.
# Entity ids are left to HA (device name + entity name): no object_id, which HA stops honouring in
# 2026.4.
import json

# One row per entity: (component, key, name, state topic suffix, value template, JSON fragment,
# flags). A template that is a bare word means that field of the diag JSON (texts cut at 255
# characters, HA's limit for a state). The fragments are kept as
# ready JSON text (shared where entities agree): the table costs a few KB of heap while imported,
# and a payload is one string format, not a dict and a json.dumps.
EXP = 1  # value entity: expire_after follows the poll interval
EXPORT = 2  # announced only once the meter provides export values
_W = '"dev_cla":"power","unit_of_meas":"W","stat_cla":"measurement"'
_WH = '"dev_cla":"energy","unit_of_meas":"Wh","stat_cla":"total_increasing"'
_D = '"ent_cat":"diagnostic"'
_COUNT = '"ent_cat":"diagnostic","stat_cla":"total_increasing","ic":'
ENTITIES = (
    ("sensor", "power", "Power", "power", None, _W, EXP),
    # Import/export power are HA-side views of the one signed value: nothing extra on the device.
    ("sensor", "power_import", "Power import", "power", "{{ [value | int(0), 0] | max }}", _W, EXP),
    ("sensor", "power_export", "Power export", "power", "{{ [0 - (value | int(0)), 0] | max }}", _W, EXP),
    ("sensor", "energy_in", "Energy consumed", "energy/in", None, _WH, EXP),
    ("sensor", "energy_out", "Energy returned", "energy/out", None, _WH, EXP | EXPORT),
    ("sensor", "energy_net", "Energy net", "energy/net", None,
     '"dev_cla":"energy","unit_of_meas":"Wh","stat_cla":"total"', EXP | EXPORT),
    ("sensor", "link", "Meter link", "diag", "link", _D + ',"dev_cla":"enum","ic":"mdi:zigbee","ops":['
     '"starting","ok","no_readings","no_answer","unknown_layout","no_values"]', 0),
    ("sensor", "link_text", "Meter link details", "diag", "link_text[:255]", _D + ',"ic":"mdi:information-outline"', 0),
    # "None" is HA's word for "no value": nothing is shown rather than a made-up "none".
    ("sensor", "last_error", "Last error", "diag", "{{ value_json.last_error[:255] or None }}",
     _D + ',"ic":"mdi:alert-circle-outline"', 0),
    # The device may have no wall clock: it sends the error's age and HA dates it (to the minute, so
    # the state does not move with each diagnostics message).
    ("sensor", "last_error_time", "Last error time", "diag",
     "{{ (now() - timedelta(seconds=value_json.last_error_age_s)).replace(second=0, microsecond=0)"
     ".isoformat() if value_json.last_error_age_s is number else None }}", _D + ',"dev_cla":"timestamp"', 0),
    ("sensor", "rejected", "Readings rejected", "diag", "rejected", _COUNT + '"mdi:filter-remove-outline"', 0),
    ("sensor", "joins", "Re-joins", "diag", "joins", _COUNT + '"mdi:link-variant"', 0),
    ("sensor", "mgm_errors", "MGM errors", "diag", "mgm_errors", _COUNT + '"mdi:alert"', 0),
    ("sensor", "readings", "Readings", "diag", "readings", _COUNT + '"mdi:counter"', 0),
    ("sensor", "errors", "Errors", "diag", "errors", _COUNT + '"mdi:alert"', 0),
    ("sensor", "mgm_version", "MGM firmware version", "diag", "mgm_version", _D + ',"ic":"mdi:chip"', 0),
    ("sensor", "mgm_mac", "MGM MAC", "diag", "mgm_mac", _D + ',"ic":"mdi:identifier"', 0),
    ("sensor", "rssi", "Wi-Fi signal", "diag", "rssi",
     _D + ',"dev_cla":"signal_strength","unit_of_meas":"dBm","stat_cla":"measurement"', 0),
    ("sensor", "ip", "IP address", "diag", "ip", _D + ',"ic":"mdi:ip-network"', 0),
    ("sensor", "ssid", "Wi-Fi network", "diag", "ssid", _D + ',"ic":"mdi:wifi"', 0),
    ("sensor", "uptime", "Uptime", "diag", "uptime_s",
     _D + ',"dev_cla":"duration","unit_of_meas":"s","stat_cla":"total_increasing"', 0),
    ("sensor", "free_mem", "Free memory", "diag", "free_mem",
     _D + ',"dev_cla":"data_size","unit_of_meas":"B","stat_cla":"measurement"', 0),
    ("button", "rejoin", "Re-join meter", None, None,
     '"ent_cat":"config","ic":"mdi:link-variant","cmd_t":"~/cmd/rejoin","pl_prs":"PRESS"', 0),
    ("button", "restart", "Restart", None, None,
     '"ent_cat":"config","dev_cla":"restart","cmd_t":"~/cmd/restart","pl_prs":"PRESS"', 0),
    ("number", "poll_interval", "Poll interval", "diag", "poll_interval_s",
     '"ent_cat":"config","cmd_t":"~/cmd/poll_interval","unit_of_meas":"s","min":5,"max":300,"step":1,'
     '"mode":"box"', 0),
    ("switch", "raw_frames", "Publish raw frames", "diag", "raw_frames",
     '"ent_cat":"config","ic":"mdi:bug","cmd_t":"~/cmd/raw_frames","pl_on":"ON","pl_off":"OFF"', 0),
    # MGM v4/v6 owners: readings from the module's own log lines (README, unknown versions).
    ("switch", "mgm_log", "MGM log", "diag", "mgm_log",
     '"ent_cat":"config","ic":"mdi:text-box-search-outline","cmd_t":"~/cmd/mgm_log","pl_on":"ON",'
     '"pl_off":"OFF"', 0),
    ("sensor", "source", "Reading source", "diag", "source", _D + ',"dev_cla":"enum","ic":"mdi:source-branch",'
     '"ops":["r","log","r+log (cross-checked)","none"]', 0),
    ("sensor", "mgm_log_text", "MGM log details", "diag", "mgm_log_text[:255]", _D + ',"ic":"mdi:text-box-outline"', 0),
)


def config_topic(prefix, node_id, entity):
    return "%s/%s/%s/%s/config" % (prefix, entity[0], node_id, entity[1])


def payload(entity, base, node_id, device_json, expire_after, origin_json):
    """The discovery JSON of one entity (a str). device_json and origin_json: made once per
    announcement with device_json()/origin_json()."""
    comp, key, name, state, tmpl, frag, flags = entity
    extra = ""
    if state:
        extra += ',"stat_t":"~/%s"' % state
    if tmpl:
        if tmpl[0] != "{":
            tmpl = "{{ value_json.%s }}" % tmpl
        extra += ',"val_tpl":"%s"' % tmpl
    if flags & EXP:
        # A frozen value would lie: after three missed updates HA shows "unavailable" instead.
        extra += ',"exp_aft":%d' % expire_after
    return '{"~":%s,"name":"%s","uniq_id":"%s_%s","avty_t":"~/status"%s,%s,"dev":%s,"origin":%s}' % (
        json.dumps(base), name, node_id, key, extra, frag, device_json, origin_json)


def origin_json(sw_version):
    # HA names the origin of a discovery payload in its logs and repair issues.
    return json.dumps({"name": "vue-utility", "sw_version": sw_version})


def device_json(node_id, name, sw_version, mgm_version, mgm_mac, wifi_mac=None):
    d = {
        "ids": [node_id],
        "name": name,
        "mf": "Emporia (community firmware)",
        "mdl": "Vue Utility Connect",
        "sw": sw_version,
    }
    if mgm_version is not None:
        d["hw_version"] = "MGM111 firmware v%s" % mgm_version
    cns = []
    if wifi_mac:
        cns.append(["mac", wifi_mac])
    if mgm_mac:
        cns.append(["zigbee", mgm_mac])
    if cns:
        d["cns"] = cns
    return json.dumps(d)


def entities(has_export, only=0):
    """The entities to announce (has_export: the meter provides export values); only=EXP or
    EXPORT: just the entities with that flag."""
    return [e for e in ENTITIES if (has_export or not e[6] & EXPORT) and (not only or e[6] & only)]
