"""The network and the broker misbehaving, end to end: the firmware under the real MicroPython unix
port, a real mosquitto, HA as a paho client, and the faults of tests/net_faults.py (a broker that
accepts TCP and never answers; a path that vanishes without FIN or RST). The firmware must say in
words what is wrong, keep its meter session running, and be back with data soon after the fault
ends. (How long its loop steps take meanwhile is measured by bench/mqtt_steps.py.)"""
import json
import re
import signal
import time

import net_faults
import sim_env
from harness import Firmware


def numeric(p):
    try:
        int(p)
        return True
    except ValueError:
        return False


def stats_after_ctrl_c(fw):
    fw.proc.send_signal(signal.SIGINT)
    fw.wait_exit(20)
    return fw.wait_log("stats: ")


def test_a_broker_that_accepts_tcp_and_never_answers_is_reported_and_retried(mgm, firmware, tmp_path):
    silent = net_faults.SilentBroker().start()
    try:
        sim = mgm(8)
        cfg = sim_env.firmware_config(sim.path, silent.port, debug={"time_scale": 50})
        fw = firmware(sim, cfg=cfg)
        line = fw.wait_log(r"MQTT broker 127\.0\.0\.1:%d not reachable \(the broker took the TCP connection "
                           r"but did not answer \(no CONNACK\) within 5 s\)" % silent.port, timeout=20)
        assert "retrying every" in line
        deadline = time.time() + 20
        while silent.accepted < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert silent.accepted >= 3, "gave up after %d attempts" % silent.accepted
        assert silent.received > 0  # it did send its CONNECT each time
        # Meanwhile the meter session ran on: readings were taken (and wait in the outbox).
        stats = stats_after_ctrl_c(fw)
        assert int(re.search(r"stats: (\d+) readings", stats).group(1)) > 0, stats
        assert "Traceback" not in fw.output
    finally:
        silent.stop()


def test_a_path_that_vanishes_silently_is_found_by_the_keepalive_and_data_comes_back(
        mgm, firmware, ha, broker):
    # What a Wi-Fi access point that disappears looks like: no FIN, no RST, just nothing. On the
    # ESP32 the app once blocked in a network call until the watchdog reset the board.
    proxy = net_faults.Proxy(broker.port, delay_s=0.02).start()
    try:
        sim = mgm(8, speedup=600)
        fw = firmware(sim, mqtt={"port": proxy.port, "keepalive_s": 10})
        ha.wait_topic("/power", numeric)
        fw.wait_log("MQTT connected")
        proxy.freeze()
        line = fw.wait_log(r"MQTT connection lost \(no answer from the broker for [\d.]+ s after a keepalive "
                           r"ping: the network path or the broker is gone\); reconnecting", timeout=30)
        # While the path is gone: attempts are made, and each is given up in words, not waited on.
        fw.wait_log(r"MQTT broker 127\.0\.0\.1:%d not reachable \(the broker took the TCP connection but "
                    r"did not answer" % proxy.port, timeout=20)
        assert fw.proc.poll() is None, fw.output[-3000:]
        proxy.thaw()
        mark = ha.mark()
        ha.wait_topic("/power", numeric, after=mark, timeout=30)
        ha.wait_for(lambda t, p, r: t.endswith("/status") and p == "online", what="online again")
        assert "Traceback" not in fw.output
        print("\nvanished path, the firmware says: " + line)
    finally:
        proxy.stop()


def test_after_a_broker_restart_data_is_back_within_seconds(mgm, firmware, ha, broker):
    # Readings used to wait up to 60 s for the next attempt (backoff 1, 2, 5, 10, 30, 60 s).
    sim = mgm(8, speedup=600)
    fw = firmware(sim)
    ha.wait_topic("/power", numeric)
    ha.stop()
    broker.stop()
    time.sleep(20)  # long enough that the old backoff reached 30 s between attempts
    broker.start()
    t0 = time.time()
    from harness import HomeAssistant
    ha2 = HomeAssistant(broker.port)
    try:
        # The retry interval is capped at a few seconds: generous margin here, the figure itself
        # is measured by bench/mqtt_steps.py.
        ha2.wait_topic("/power", numeric, timeout=20)
        print("\nbroker back: data after %.1f s" % (time.time() - t0))
        fw.wait_log("MQTT connection lost")
        assert "Traceback" not in fw.output
    finally:
        ha2.stop()


def test_a_refused_login_names_the_settings_to_check_and_never_the_password(mgm, tmp_path):
    b = sim_env.Broker(workdir=str(tmp_path / "authbroker"), users={"vue": "s3cret-pw"}).start()
    try:
        sim = mgm(8)
        cfg = sim_env.firmware_config(sim.path, b.port, mqtt={"user": "vue"}, debug={"time_scale": 50})
        wd = tmp_path / "fw"
        wd.mkdir()
        with open(wd / "secrets.json", "w") as f:
            json.dump({"mqtt": {"password": "Wr0ng-Passw0rd"}}, f)
        fw = Firmware(str(wd), sim_env.start_firmware(str(wd), cfg))
        try:
            line = fw.wait_log(r"MQTT broker 127\.0\.0\.1:%d refused the login" % b.port)
            assert "user 'vue'" in line and "bad user name or password" in line
            assert "mqtt.user in config.json" in line and "mqtt.password in secrets.json" in line
            assert "not reachable" not in line
            time.sleep(1)
            assert "Wr0ng-Passw0rd" not in fw.output
            assert "Traceback" not in fw.output
        finally:
            fw.stop()
        # No user at all, on a broker that requires one.
        cfg = sim_env.firmware_config(sim.path, b.port, debug={"time_scale": 50})
        fw = Firmware(str(tmp_path / "fw2"), sim_env.start_firmware(str(tmp_path / "fw2"), cfg))
        try:
            line = fw.wait_log(r"MQTT broker 127\.0\.0\.1:%d requires a login: set mqtt.user in config.json "
                               r"and mqtt.password in secrets.json" % b.port)
        finally:
            fw.stop()
    finally:
        b.stop()
