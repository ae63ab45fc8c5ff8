"""What Home Assistant sees of the device, end to end: the firmware under the real MicroPython unix port,
the simulated MGM111, a real mosquitto, and a paho client in HA's role that expands the discovery
payloads as HA does and renders their templates with Jinja2."""
import datetime
import json
import re
import time

import jinja2

from test_firmware_e2e import numeric

BASE = "vue_utility/sim0001"
ABBR = {"stat_t": "state_topic", "val_tpl": "value_template", "exp_aft": "expire_after", "cmd_t": "command_topic",
        "avty_t": "availability_topic", "dev": "device", "dev_cla": "device_class", "ops": "options",
        "uniq_id": "unique_id", "unit_of_meas": "unit_of_measurement", "stat_cla": "state_class"}


def expand(payload):
    p = json.loads(payload)
    out = {ABBR.get(k, k): v for k, v in p.items()}
    for k, v in out.items():
        if k.endswith("_topic") and isinstance(v, str) and v.startswith("~"):
            out[k] = p["~"] + v[1:]
    return out


def configs(ha, after=0, before=None):
    with ha.cond:
        msgs = ha.messages[after:before]
    return [(t, expand(p)) for t, p, r in msgs if t.startswith("homeassistant/") and t.endswith("/config")]


def wait_announced(ha, quiet=1.5, timeout=30):
    """Until no discovery message has come for `quiet` seconds (the boot announcement is done)."""
    deadline = time.time() + timeout
    n, since = -1, time.time()
    while time.time() < deadline:
        k = len(configs(ha))
        if k != n:
            n, since = k, time.time()
        elif k and time.time() - since >= quiet:
            return n
        time.sleep(0.1)
    raise AssertionError("the announcement never finished")


def render(template, value=None, value_json=None):
    env = jinja2.Environment()
    return env.from_string(template).render(value=value, value_json=value_json, now=datetime.datetime.now,
                                            timedelta=datetime.timedelta)


def test_every_entity_is_announced_once_at_boot_with_its_final_payload(mgm, firmware, ha):
    sim = mgm(8, speedup=600)
    firmware(sim)
    ha.diag(lambda d: d["link"] == "ok" and d["readings"] >= 5)
    wait_announced(ha)
    seen = configs(ha)
    topics = [t for t, p in seen]
    assert len(topics) == len(set(topics)), "announced more than once: %s" % sorted(
        t for t in set(topics) if topics.count(t) > 1)
    keys = {t.split("/")[-2] for t in topics}
    assert {"power", "power_import", "power_export", "energy_in", "energy_out", "link"} <= keys
    for t, p in seen:
        dev = p["device"]
        assert dev["hw_version"] == "MGM111 firmware v8", t
        assert ["zigbee", sim.mac] in [[k, v.upper()] for k, v in dev["cns"]] or \
            ["zigbee", sim.mac] in dev["cns"], t
        assert any(k == "mac" for k, v in dev["cns"]), "no Wi-Fi MAC connection: %s" % t
        assert p["origin"]["name"] == "vue-utility"
        assert "object_id" not in p and "obj_id" not in p


def test_poll_interval_change_keeps_value_entities_available(mgm, firmware, ha):
    sim = mgm(8, speedup=600)
    fw = firmware(sim)
    ha.diag(lambda d: d["link"] == "ok" and d["readings"] >= 2)
    wait_announced(ha)
    mark = ha.mark()
    ha.publish(BASE + "/cmd/poll_interval", "240")
    ha.diag(lambda d: d["poll_interval_s"] == 240, after=mark)
    deadline = time.time() + 10
    while time.time() < deadline:
        again = configs(ha, mark)
        if {t.split("/")[-2] for t, p in again} >= {"power", "energy_in"}:
            break
        time.sleep(0.2)
    again = dict(configs(ha, mark))
    value_keys = {t.split("/")[-2] for t in again}
    assert value_keys >= {"power", "power_import", "power_export", "energy_in"}
    for t, p in again.items():
        assert "expire_after" in p, "an entity without expire_after was re-announced: %s" % t
        assert p["expire_after"] >= 3 * 240, (t, p["expire_after"])
    assert "Traceback" not in fw.output


def test_import_and_export_power_as_home_assistant_renders_them(mgm, firmware, ha):
    sim = mgm(8, speedup=3000)  # a whole simulated day in a few seconds: import and export
    firmware(sim)
    ha.wait_topic("/power", lambda p: numeric(p) and int(p) < 0, timeout=40)
    wait_announced(ha)
    cfg = {t.split("/")[-2]: p for t, p in configs(ha)}
    for w in ha.values("/power"):
        imp = int(render(cfg["power_import"]["value_template"], value=w))
        exp = int(render(cfg["power_export"]["value_template"], value=w))
        assert imp >= 0 and exp >= 0 and imp - exp == int(w)
    assert cfg["power_import"]["state_topic"] == cfg["power_export"]["state_topic"] == BASE + "/power"


def test_diagnostics_read_well_in_home_assistant(mgm, firmware, ha):
    sim = mgm(8, speedup=600)
    firmware(sim)
    d = ha.diag(lambda d: d["link"] == "ok")
    wait_announced(ha)
    cfg = {t.split("/")[-2]: p for t, p in configs(ha)}
    # Every diag template names a field the firmware sends, and renders to something HA accepts.
    for key, p in cfg.items():
        if p.get("state_topic") != BASE + "/diag":
            continue
        for field in re.findall(r"value_json\.(\w+)", p["value_template"]):
            assert field in d, "%s reads value_json.%s, which diag does not send" % (key, field)
        out = render(p["value_template"], value_json=d)
        assert len(out) <= 255, "HA refuses states over 255 characters: %s" % key
        if p.get("device_class") == "enum":
            assert out in p["options"], (key, out)
        if p.get("device_class") == "timestamp" and out != "None":
            datetime.datetime.fromisoformat(out)
        if p.get("state_class") in ("measurement", "total_increasing") and out != "None":
            float(out)
    assert render(cfg["link"]["value_template"], value_json=d) == "ok"
    # No error yet: nothing shown, not the word "none".
    if not d["last_error"]:
        assert render(cfg["last_error"]["value_template"], value_json=d) == "None"
        assert render(cfg["last_error_time"]["value_template"], value_json=d) == "None"
    for key in ("rejected", "joins", "mgm_errors", "ip"):
        assert key in cfg, key
    # An error is shown with when it happened, and stays dated after recovery.
    sim.set_fault("silence")
    d = ha.diag(lambda d: d["link"] == "no_answer", timeout=30)
    assert d["last_error"] and isinstance(d["last_error_age_s"], int)
    mark = ha.mark()
    sim.clear_faults()
    d = ha.diag(lambda d: d["link"] == "ok", timeout=30, after=mark)
    assert d["last_error"], "the error is kept after recovery, with its time"
    t = datetime.datetime.fromisoformat(render(cfg["last_error_time"]["value_template"], value_json=d))
    assert abs((datetime.datetime.now() - t).total_seconds()) < 180
