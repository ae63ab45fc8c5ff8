"""mqtt.tls end to end: the firmware under the real MicroPython unix port talks MQTT over TLS to a
real mosquitto whose certificate is made by the test (sim_env.Broker(tls=True)); Home Assistant (a
paho client on the broker's plain listener) sees the readings."""
import os
import re
import time

import pytest

import sim_env


@pytest.fixture
def broker(tmp_path):
    """conftest's broker plus a TLS listener (`ha` and `firmware` use this one in this module)."""
    b = sim_env.Broker(workdir=str(tmp_path / "broker"), tls=True).start()
    yield b
    b.stop()


def tls(broker, tmp_path, host="localhost", ca="pem"):
    """The mqtt section for the broker's TLS listener. ca: "pem"/"der" = the broker's CA given to
    the device (beside config.json, as `make config` puts it), None = no certificate check."""
    m = {"tls": True, "host": host, "port": broker.tls_port}
    if ca:
        fw = tmp_path / "fw"
        fw.mkdir(exist_ok=True)
        with open(broker.ca_file, "rb") as f:
            (fw / ("broker-ca." + ca)).write_bytes(f.read() if ca == "pem" else broker.ca_der)
        m["ca_file"] = "broker-ca." + ca
    return m


def broker_log(broker):
    with open(os.path.join(broker.dir, "broker.log"), "rb") as f:
        return f.read().decode("utf-8", "replace")


@pytest.mark.parametrize("ca, host", [("pem", "localhost"), ("der", "localhost"), ("pem", "127.0.0.1")],
                         ids=["pem", "der", "ip-address-host"])
def test_readings_reach_home_assistant_over_tls(mgm, firmware, ha, broker, tmp_path, ca, host):
    # The test broker's certificate names localhost and 127.0.0.1 (an IP address in mqtt.host is
    # common in Home Assistant setups).
    sim = mgm(8, speedup=600)
    fw = firmware(sim, mqtt=tls(broker, tmp_path, host=host, ca=ca))
    ha.wait_for(lambda t, p, r: t.endswith("/status") and p == "online", what="online over TLS")
    ha.wait_for(lambda t, p, r: t.endswith("/power/config"), what="discovery over TLS")
    power = int(ha.wait_topic("/power", lambda p: p.lstrip("-").isdigit()))
    assert power in [r["power_w"] for r in sim.readings], "HA got a power value the meter never sent"
    int(ha.wait_topic("/energy/in", lambda p: p.isdigit()))
    fw.wait_log("MQTT connected to %s:%d" % (host, broker.tls_port))
    # It really was the TLS listener (a plain MQTT client gets nowhere there).
    assert re.search(r"New connection from 127\.0\.0\.1:\d+ on port %d" % broker.tls_port, broker_log(broker))
    assert "Traceback" not in fw.output
    assert "without checking" not in fw.output  # the certificate was checked


def test_without_a_ca_file_tls_works_unchecked_and_the_log_says_so_once(mgm, firmware, ha, broker, tmp_path):
    fw = firmware(mgm(8, speedup=600), mqtt=tls(broker, tmp_path, ca=None))
    ha.wait_topic("/power", lambda p: p.lstrip("-").isdigit())
    line = fw.wait_log("without checking the broker's certificate")
    assert "mqtt.ca_file" in line
    # A setting, said once per boot, not at every reconnect: the broker restarts, the firmware
    # connects again (unchecked again) and says nothing more about it.
    connects = fw.output.count("MQTT connected to")
    broker.stop()
    broker.start()
    deadline = time.time() + 30
    while fw.output.count("MQTT connected to") <= connects:
        assert time.time() < deadline, fw.output[-2000:]
        time.sleep(0.2)
    assert fw.output.count("without checking") == 1


def impostor_refused(fw, impostor):
    """The firmware's log line about the impostor, once it refused it; the impostor never got a
    CONNECT (so never the login, the will or a reading)."""
    line = fw.wait_log(r"MQTT (connected to|broker) .*:%d" % impostor.tls_port, timeout=20)
    assert "not reachable" in line, (
        "the firmware accepted a certificate it cannot verify and will send that server the "
        "password and readings: " + line)
    assert "certificate is not trusted" in line, "the log does not say the certificate was the problem: " + line
    assert "check mqtt.ca_file and mqtt.host" in line, line
    assert "New client connected" not in broker_log(impostor)
    assert fw.proc.poll() is None and "Traceback" not in fw.output
    return line


@pytest.mark.parametrize("names", [("localhost", "127.0.0.1"), ("impostor.example",)],
                         ids=["right-name-other-CA", "wrong-name-other-CA"])
def test_a_broker_with_a_certificate_from_another_ca_is_refused(mgm, firmware, ha, broker, tmp_path, names):
    # The device knows the real broker's CA; an impostor on the path has its own.
    impostor = sim_env.Broker(workdir=str(tmp_path / "impostor"), tls=True, tls_names=names).start()
    try:
        m = tls(broker, tmp_path)
        m["port"] = impostor.tls_port
        fw = firmware(mgm(8, speedup=600), mqtt=m)
        print("\nimpostor %s, the firmware says: %s" % (names[0], impostor_refused(fw, impostor)))
    finally:
        impostor.stop()


def test_a_certificate_from_the_right_ca_for_another_name_is_refused(mgm, firmware, ha, tmp_path):
    # The right CA, but the certificate is not for the name the device was told to connect to.
    b = sim_env.Broker(workdir=str(tmp_path / "named"), tls=True, tls_names=("mqtt.example",)).start()
    try:
        fw = firmware(mgm(8, speedup=600), mqtt=tls(b, tmp_path))
        print("\ncertificate for mqtt.example, host localhost: " + impostor_refused(fw, b))
    finally:
        b.stop()


def test_soak_over_tls(mgm, firmware, ha, broker, tmp_path, monkeypatch):
    """tests/test_soak.py with MQTT over TLS: fits the same small heap, faults included.
    `make bench` runs it with SOAK_POLLS=2000 and smaller and smaller SOAK_HEAP."""
    import test_soak
    monkeypatch.setattr(test_soak, "POLLS", int(os.environ.get("SOAK_POLLS", "500")))

    def tls_firmware(sim, **kw):
        kw["mqtt"] = tls(broker, tmp_path)
        return firmware(sim, **kw)
    test_soak.test_soak_10000_polls_small_heap(mgm, tls_firmware, ha, tmp_path)
    assert re.search(r"New connection from 127\.0\.0\.1:\d+ on port %d" % broker.tls_port, broker_log(broker))


def test_tls_against_a_plain_listener_is_reported_and_retried(mgm, firmware, ha, broker):
    # A common mistake: TLS switched on, the broker's port speaks plain MQTT. The user must read
    # what is wrong in the log, and the firmware must keep running and retrying.
    sim = mgm(8, speedup=600)
    fw = firmware(sim, mqtt={"tls": True, "host": "localhost", "port": broker.port})
    line = fw.wait_log(r"MQTT broker localhost:%d not reachable" % broker.port, timeout=20)
    assert fw.proc.poll() is None, fw.output[-2000:]
    assert "Traceback" not in fw.output
    print("\nTLS to a plain listener, the firmware says: " + line)
