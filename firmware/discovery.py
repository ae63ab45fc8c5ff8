# Home Assistant MQTT discovery, built from one table of entities. Pure: tested on the host.
# Payloads use HA's documented abbreviations (homeassistant/components/mqtt/abbreviations.py) and
# the "~" base topic: they are the device's heap peak while announcing, and this roughly halves them.
# Entity ids are left to HA (device name + entity name): no object_id, which HA stops honouring in
# 2026.4.
import json

# The entity table is discovery_rows.py (data only): an announcement step imports it for the row of
# one entity, drops it, then imports this module for the payload, and drops it too. A payload is
# sent in pieces (parts()), not built as one string.
EXP = 1  # value entity: expire_after follows the poll interval
EXPORT = 2  # announced only once the meter provides export values
_SHARED = {
    "W": '"dev_cla":"power","unit_of_meas":"W","stat_cla":"measurement"',
    "H": '"dev_cla":"energy","unit_of_meas":"Wh","stat_cla":"total_increasing"',
    "D": '"ent_cat":"diagnostic"',
    "C": '"ent_cat":"diagnostic","stat_cla":"total_increasing"',  # counters
}


def parse(row):
    """A discovery_rows row -> (component, key, name, state topic suffix or None, value template
    or None, JSON fragment, flags)."""
    comp, key, name, state, tmpl, frag, flags = row.split(";")
    if frag[:1] == "@":
        frag = _SHARED[frag[1]] + frag[2:]
    return (comp, key, name, state or None, tmpl or None, frag,
            (EXP if "E" in flags else 0) | (EXPORT if "X" in flags else 0))


class _Table:
    """The whole entity table, parsed as it is iterated (tools, tests)."""

    def __iter__(self):
        import discovery_rows
        for row in discovery_rows._ROWS:
            yield parse(row)


ENTITIES = _Table()


def config_topic(prefix, node_id, entity):
    return "%s/%s/%s/%s/config" % (prefix, entity[0], node_id, entity[1])


def parts(entity, base, node_id, device_json, expire_after, origin_json):
    """The discovery JSON of one entity as a list of pieces, sent one after the other
    (mqtt.Mqtt.publish_parts): no single ~0.7 KB block of heap, which a fragmented heap may lack.
    device_json and origin_json: made once per announcement with device_json()/origin_json()."""
    comp, key, name, state, tmpl, frag, flags = entity
    p = ['{"~":', json.dumps(base), ',"name":"', name, '","uniq_id":"', node_id, "_", key, '","avty_t":"~/status"']
    if state:
        p.extend((',"stat_t":"~/', state, '"'))
    if tmpl:
        p.extend((',"val_tpl":"', tmpl, '"') if tmpl[0] == "{" else (',"val_tpl":"{{ value_json.', tmpl, ' }}"'))
    if flags & EXP:
        # A frozen value would lie: after three missed updates HA shows "unavailable" instead.
        p.extend((',"exp_aft":', str(expire_after)))
    p.extend((",", frag, ',"dev":', device_json, ',"origin":', origin_json, "}"))
    return p


def payload(entity, base, node_id, device_json, expire_after, origin_json):
    """The discovery JSON of one entity (a str): parts() joined."""
    return "".join(parts(entity, base, node_id, device_json, expire_after, origin_json))


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
    """The entities to announce, one at a time (has_export: the meter provides export values);
    only=EXP or EXPORT: just the entities with that flag."""
    for e in ENTITIES:
        if (has_export or not e[6] & EXPORT) and (not only or e[6] & only):
            yield e
