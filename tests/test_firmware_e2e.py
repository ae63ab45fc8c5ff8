"""End to end: the firmware under the real MicroPython unix port, the simulated MGM111 over a pty,
a real mosquitto, and a paho client checking what Home Assistant would see."""
import json
import time

import pytest

INSTALL_CODE = bytes.fromhex("0badc0de5ec7e700")


def numeric(p):
    try:
        int(p)
        return True
    except ValueError:
        return False


def assert_never_decreases(values, what):
    nums = [int(v) for v in values]
    assert nums == sorted(nums), "%s went down (HA would read a meter reset): %s" % (what, nums)


def assert_no_secrets(ha, fw, *secrets):
    text = fw.output + "\n".join(t + " " + p for t, p, r in ha.messages)
    for s in secrets:
        assert s not in text


@pytest.mark.parametrize("version", [7, 8])
def test_zcl_meter_reaches_home_assistant(mgm, firmware, ha, version):
    sim = mgm(version, install_code=INSTALL_CODE, speedup=600)
    fw = firmware(sim)
    # Discovery, availability, power and both totals as HA's Energy dashboard needs them.
    t, p, r = ha.wait_for(lambda t, p, r: t.endswith("/energy_in/config"), what="discovery")
    cfg = json.loads(p)  # HA's abbreviations: stat_cla = state_class, unit_of_meas = unit_of_measurement
    assert cfg["stat_cla"] == "total_increasing" and cfg["unit_of_meas"] == "Wh"
    ha.wait_for(lambda t, p, r: t.endswith("/status") and p == "online", what="online")
    ha.wait_topic("/power", numeric)
    ha.wait_topic("/energy/out", numeric, timeout=30)
    ha.wait_for(lambda t, p, r: t.endswith("/energy_out/config"), what="returned-energy discovery")
    d = ha.diag(lambda d: d["link"] == "ok" and d["mgm_version"] == version and d["readings"] >= 3)
    assert d["mgm_mac"] == sim.mac.upper() or d["mgm_mac"].lower() == sim.mac.lower()
    ha.wait_topic("/energy/in", numeric)
    time.sleep(1)
    assert_never_decreases(ha.values("/energy/in"), "energy consumed")
    assert_never_decreases(ha.values("/energy/out"), "energy returned")
    # The install code pairs the meter: it must appear nowhere (log or MQTT).
    assert_no_secrets(ha, fw, INSTALL_CODE.hex(), INSTALL_CODE[::-1].hex(), INSTALL_CODE.hex().upper())
    assert "install code present (not shown)" in fw.output


def test_v2_meter_derives_consumed_and_returned_and_shows_export_as_negative_power(mgm, firmware, ha):
    # speedup / time_scale (50) x the house's ~4 kW must stay under the filter's 131 kW bound, else
    # the simulated meter counts faster than physics allows in the firmware's time.
    sim = mgm(2, speedup=1000)
    firmware(sim)
    ha.wait_topic("/power", lambda p: numeric(p) and int(p) < 0, timeout=40)
    ha.wait_topic("/energy/out", lambda p: numeric(p) and int(p) > 0, timeout=40)
    ins, outs = ha.values("/energy/in"), ha.values("/energy/out")
    assert ins and all(int(v) > 0 for v in ins), "no zero total may ever be published"
    assert_never_decreases(ins, "energy consumed")
    assert_never_decreases(outs, "energy returned")


def test_unknown_layout_is_kept_visible_not_guessed(mgm, firmware, ha):
    sim = mgm("unknown")
    fw = firmware(sim)
    raw = json.loads(ha.wait_topic("/debug/raw"))
    assert raw["hex"] and "unknown payload layout" in raw["error"]
    ha.diag(lambda d: "unknown payload layout" in d["last_error"] and d["readings"] == 0)
    assert ha.values("/power") == [] and ha.values("/energy/in") == []
    fw.wait_log("cannot decode reading")


def test_unknown_layout_is_diagnosed_as_such_and_never_rejoined(mgm, firmware, ha):
    # An MGM v4/v6 answers every poll in a layout nobody has decoded: that is neither a lost pairing
    # nor a dead module, and re-joins would only risk the pairing (protocol.md, "Unknown versions").
    sim = mgm("unknown")
    fw = firmware(sim)
    d = ha.diag(lambda d: d["link"] == "unknown_layout")
    assert "cannot read yet" in d["link_text"] and "MGM log" in d["link_text"]
    joins_at_start = sim.joins
    polls = sim.requests.get("r", 0)
    # Ten stale timeouts (30 s each at time_scale 50 = 0.6 s) pass without a re-join.
    time.sleep(6)
    assert sim.requests.get("r", 0) >= polls + 10, "polling must go on"
    assert sim.joins == joins_at_start, "re-joined a meter that answers every poll"
    assert "pairing is lost" not in fw.output
    assert all(json.loads(p)["link"] in ("starting", "unknown_layout") for p in ha.values("/diag"))


def test_pairing_lost_is_told_apart_from_a_dead_module(mgm, firmware, ha):
    sim = mgm(8)
    fw = firmware(sim)
    ha.diag(lambda d: d["link"] == "ok")
    sim.set_fault("no_readings")
    d = ha.diag(lambda d: d["link"] == "no_readings", timeout=30)
    assert "pairing is lost" in d["link_text"]
    fw.wait_log("re-join|join \\(no reading")
    joins_before = sim.joins
    time.sleep(4)
    # Backoff: the first re-join waits 60 s (1.2 s at time_scale 50), then 2, 4 ... never a join per poll.
    assert sim.joins - joins_before <= 3, sim.joins
    sim.clear_faults()
    ha.diag(lambda d: d["link"] == "ok", timeout=30)

    sim.set_fault("silence")
    d = ha.diag(lambda d: d["link"] == "no_answer", timeout=30)
    assert "does not answer at all" in d["link_text"]
    fw.wait_log("no answer from the MGM111 for .* re-initialising the UART", timeout=30)
    sim.clear_faults()
    mark = ha.mark()
    ha.diag(lambda d: d["link"] == "ok", timeout=30, after=mark)
    ha.wait_topic("/power", numeric, after=mark)


@pytest.mark.parametrize("fault", ["garbage", "log_text", "truncate", "bad_terminator", "lying_length",
                                   "dollar", "duplicate", "errors", "missing"])
def test_readings_survive_line_faults(mgm, firmware, ha, fault):
    sim = mgm(8, speedup=600)
    fw = firmware(sim)
    ha.diag(lambda d: d["readings"] >= 2)
    sim.set_fault(fault)
    time.sleep(2.5)
    sim.clear_faults()
    mark = ha.mark()
    d = ha.diag(lambda d: d["link"] == "ok", after=mark)
    n = d["readings"]
    ha.diag(lambda d: d["readings"] >= n + 3, after=mark)
    if fault == "duplicate":
        assert d["duplicates"] > 0
    if fault == "errors":
        assert d["mgm_errors"] > 0
    if fault == "log_text":
        assert "MGM: " in fw.output
    assert_never_decreases(ha.values("/energy/in"), "energy consumed")
    assert "Traceback" not in fw.output


def test_wh_glitch_never_reaches_a_total_and_a_real_reset_rebaselines(mgm, firmware, ha):
    sim = mgm(8, speedup=600)
    firmware(sim)
    ha.wait_topic("/energy/in", numeric)
    sim.set_fault("wh_glitch", count=1)
    time.sleep(2)
    assert_never_decreases(ha.values("/energy/in"), "energy consumed")
    d = ha.diag()
    ha.diag(lambda x: x["rejected"] > 0, timeout=10)


def test_broker_restart_readings_resume_without_false_reset(mgm, firmware, ha, broker):
    sim = mgm(2, speedup=1000)
    fw = firmware(sim)
    ha.wait_topic("/energy/in", numeric, timeout=30)
    broker.stop()
    time.sleep(3)
    broker.start()
    mark = ha.mark()
    ha.wait_for(lambda t, p, r: t.endswith("/status") and p == "online", timeout=30, what="online again")
    ha.wait_topic("/energy/in", numeric, after=mark, timeout=30)
    fw.wait_log("MQTT connection lost|MQTT broker .* not reachable")
    assert_never_decreases(ha.values("/energy/in"), "energy consumed")
    assert_never_decreases(ha.values("/energy/out"), "energy returned")


def test_v2_totals_survive_a_reboot(mgm, firmware, ha, tmp_path):
    sim = mgm(2, speedup=1000)
    fw = firmware(sim)
    ha.wait_topic("/energy/in", numeric, timeout=30)
    time.sleep(1)
    fw.stop()
    last_in = int(ha.values("/energy/in")[-1])
    # A different working directory: no state file, so the totals can only come from the broker.
    mark = ha.mark()
    fw2 = firmware(sim, workdir=str(tmp_path / "fw2"))
    fw2.wait_log("restored totals from the broker")
    first = int(ha.wait_topic("/energy/in", numeric, after=mark, timeout=30))
    assert first >= last_in
    assert_never_decreases(ha.values("/energy/in"), "energy consumed")


def test_commands_from_home_assistant(mgm, firmware, ha):
    sim = mgm(8)
    fw = firmware(sim)
    d = ha.diag(lambda d: d["link"] == "ok")
    base = "vue_utility/sim0001"
    ha.publish(base + "/cmd/poll_interval", "abc")
    fw.wait_log("refused command poll_interval='abc'")
    ha.publish(base + "/cmd/poll_interval", "3")
    fw.wait_log("refused command poll_interval='3'")
    ha.publish(base + "/cmd/nonsense", "1")
    fw.wait_log("refused command nonsense")
    assert ha.diag()["poll_interval_s"] == d["poll_interval_s"]
    ha.publish(base + "/cmd/poll_interval", "60")
    ha.diag(lambda d: d["poll_interval_s"] == 60)
    joins = sim.joins
    ha.publish(base + "/cmd/rejoin", "PRESS")
    fw.wait_log("command: re-join")
    deadline = time.time() + 10
    while sim.joins == joins and time.time() < deadline:
        time.sleep(0.1)
    assert sim.joins > joins
    ha.publish(base + "/cmd/raw_frames", "ON")
    raw = json.loads(ha.wait_topic("/debug/raw", timeout=10))
    assert raw["mgm_version"] == 8 and raw["cmd"] == "r" and len(raw["hex"]) >= 20
    mark = ha.mark()
    ha.publish("homeassistant/status", "online")
    ha.wait_topic("/power/config", after=mark)  # discovery published again after HA's birth
    ha.publish(base + "/cmd/restart", "PRESS")
    assert fw.wait_exit() == 3
    assert ha.wait_for(lambda t, p, r: t.endswith("/status") and p == "offline")


def test_bad_config_gives_a_clear_message_and_safe_mode(mgm, firmware, broker, tmp_path):
    sim = mgm(8)
    fw = firmware(sim, cfg={"mqtt": {"host": "127.0.0.1", "port": "1883"}, "meter": {"poll_interval_s": 1},
                            "uart": {"device": sim.path}})
    assert fw.wait_exit() == 2
    out = fw.output
    assert "SAFE MODE" in out and 'mqtt.port: must be a whole number, got "1883"' in out
    assert "meter.poll_interval_s: must be between 5 and 300, got 1" in out
    assert "Traceback" not in out


def test_mqtt_user_and_password(mgm, firmware, tmp_path):
    import sim_env
    from harness import Firmware
    b = sim_env.Broker(workdir=str(tmp_path / "authbroker"), users={"vue": "s3cret-pw"}).start()
    try:
        sim = mgm(8)
        cfg = sim_env.firmware_config(sim.path, b.port, mqtt={"user": "vue", "password": "wrong"},
                                      debug={"time_scale": 50})
        fw = Firmware(str(tmp_path / "fw"), sim_env.start_firmware(str(tmp_path / "fw"), cfg))
        try:
            fw.wait_log("bad user name or password|not authorised")
        finally:
            fw.stop()
        with open(tmp_path / "fw" / "secrets.json", "w") as f:
            json.dump({"mqtt": {"password": "s3cret-pw"}}, f)
        fw = Firmware(str(tmp_path / "fw"), sim_env.start_firmware(str(tmp_path / "fw"), cfg))
        try:
            fw.wait_log("MQTT connected")
            assert "s3cret-pw" not in fw.output and "wrong" not in fw.output
        finally:
            fw.stop()
    finally:
        b.stop()
