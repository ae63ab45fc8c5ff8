"""MGM log mode end to end: the firmware under the real MicroPython unix port, the simulated MGM111 over
its pty (versions whose `r` layout nobody can read, and v8), a real mosquitto, and HA as a paho client."""
import json
import time

from test_firmware_e2e import assert_never_decreases, numeric

BASE = "vue_utility/sim0001"


def close_to_model(sim, published, key, tolerance):
    """True when `published` is within `tolerance` of one of the simulator's true values for `key`."""
    return any(abs(int(published) - r[key]) <= tolerance for r in sim.readings[-200:])


def test_unknown_layout_meter_gives_readings_from_the_mgm_log(mgm, firmware, ha):
    sim = mgm(6, speedup=600)
    fw = firmware(sim, meter={"mgm_log": True})
    d = ha.diag(lambda d: d["source"] == "log" and d["readings"] >= 4, timeout=40)
    assert d["mgm_log"] == "ON" and d["mgm_version"] == 6
    w = ha.wait_topic("/power", numeric)
    assert close_to_model(sim, w, "power_w", 1), (w, sim.readings[-3:])
    imp = ha.wait_topic("/energy/in", numeric, timeout=30)
    assert close_to_model(sim, imp, "import_wh", 2)
    assert_never_decreases(ha.values("/energy/in"), "energy consumed")
    # The raw log lines are there for capture.py, and never the unreadable `r` frame twice.
    rx = json.loads(ha.wait_topic("/debug/rx"))
    assert rx["cmd"] == "rx" and rx["cluster"] and rx["hex"]
    assert sim.joins == 1, "re-joined a meter that answers every poll"
    assert sim.unsafe_commands() == []
    assert "Traceback" not in fw.output


def test_v8_cross_checks_both_sources(mgm, firmware, ha):
    sim = mgm(8, speedup=600)
    firmware(sim)
    ha.diag(lambda d: d["link"] == "ok" and d["source"] == "r")
    # Turned on from HA's switch, at run time.
    ha.publish(BASE + "/cmd/mgm_log", "ON")
    d = ha.diag(lambda d: d["source"] == "r+log (cross-checked)", timeout=30)
    assert d["cross_mismatches"] == 0
    assert b"loglevel 20\r" in sim.commands_received()
    ha.publish(BASE + "/cmd/mgm_log", "OFF")
    ha.diag(lambda d: d["mgm_log"] == "OFF" and d["source"] == "r", timeout=30)
    assert sim.unsafe_commands() == []


def test_a_module_that_ignores_loglevel_is_reported_in_words(mgm, firmware, ha):
    sim = mgm(6, speedup=600)
    sim.set_fault("ignore_loglevel")
    firmware(sim, meter={"mgm_log": True})
    d = ha.diag(lambda d: "ignores loglevel" in d["mgm_log_text"] and d["link"] == "unknown_layout", timeout=40)
    assert d["readings"] == 0 and d["source"] == "none"
    assert ha.values("/energy/in") == []


def test_forbidden_commands_never_reach_the_module_even_from_mqtt(mgm, firmware, ha):
    sim = mgm(8, speedup=600)
    fw = firmware(sim, meter={"mgm_log": True})
    ha.diag(lambda d: d["readings"] >= 2)
    for cmd in ("leave", "reset", "printKeys", "$d", "d", "raw", "loglevel"):
        ha.publish(BASE + "/cmd/" + cmd, "PRESS")
        ha.publish(BASE + "/cmd/mgm_log", cmd)
    fw.wait_log("refused command")
    time.sleep(1.5)  # and the rest of them handled too
    assert sim.unsafe_commands() == []
