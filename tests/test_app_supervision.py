"""A task of the app that dies must take the whole app down, so that main.py logs it and restarts
the device. Left alone it would be half-alive for good: readings flowing but, with housekeeping dead,
no diagnostics, no discovery, no watchdog feeding. Runs app.App under the real MicroPython."""
import os

import sim_env

PATH = (sim_env.FIRMWARE, os.path.join(sim_env.ROOT, "sim"), sim_env.LIB)  # the app, null_board, umqtt

SCRIPT = r"""
import asyncio
import app
import config
import null_board


class FaultyWifi(null_board.Wifi):
    checks = 0

    def check(self):
        FaultyWifi.checks += 1
        if FaultyWifi.checks == 3:
            raise OSError("wifi driver fault")
        return True


null_board.Wifi = FaultyWifi
cfg = config.defaults()
cfg["mqtt"]["host"] = "127.0.0.1"
a = app.App(cfg, null_board)
try:
    asyncio.run(asyncio.wait_for(a.main(), 5))
    print("RESULT returned")
except OSError as e:
    print("RESULT raised", e)
except asyncio.TimeoutError:
    print("RESULT still running without its housekeeping")
"""


def test_a_dying_task_ends_the_app_instead_of_leaving_it_half_alive(tmp_path):
    script = tmp_path / "supervise.py"
    script.write_text(SCRIPT)
    p = sim_env.run_micropython(script, tmp_path, PATH, timeout=30)
    assert "RESULT raised wifi driver fault" in p.stdout, p.stdout + p.stderr


NO_MEMORY_SCRIPT = r"""
import binascii, json
import app
import config
import decoders
import null_board

import time
cfg = config.defaults()
cfg["mqtt"]["host"] = "127.0.0.1"
cfg["debug"]["time_scale"] = 1000  # app.NO_MEMORY_S (10 minutes) is 0.6 s here
cfg["reporting"].update(%s)
a = app.App(cfg, null_board)
a.filter.restore({})  # as after the first connect, nothing retained: totals are published
a.restore_done = True
real = a.mqtt.publish
short = [0]  # publishes still to fail


def publish(topic, payload, retain=False):
    if short[0] and (topic.endswith(short[0]) if isinstance(short[0], str) else True):
        short[0] = short[0] if isinstance(short[0], str) else short[0] - 1
        raise MemoryError("memory allocation failed")
    real(topic, payload, retain)


a.mqtt.publish = publish
out = []
with open("payloads.hex") as f:
    payloads = [binascii.unhexlify(x) for x in f.read().split()]
for k, (p, fail) in enumerate(zip(payloads, %s)):
    short[0] = fail
    r = decoders.decode(p, decoders.Reading())
    try:
        a.on_reading(r, p)
        res = "ok"
    except MemoryError:
        res = "raised"
    except SystemExit as e:
        res = "restart %%s" %% e
    out.append([res, a.mqtt.outbox.get(a.t_in), a.mqtt.outbox.get(a.t_power)])
    a.mqtt.outbox.clear()
    if res != "ok":
        break
    time.sleep_ms(100)  # a reading every 100 ms: 6 s of the device's time each
print("RESULT " + json.dumps(out))
print("DIAG skipped_no_memory=%%d" %% json.loads(a._diag())["skipped_no_memory"])
"""


def run_no_memory(tmp_path, failures, reporting=None):
    """app.App.on_reading for one ZCL reading every 100 ms (totals +1 Wh each, 500 W), each reading's
    publishes failing with MemoryError `failures[k]` times (a topic's end: its publish fails)
    -> [(ok|raised, energy/in published, power published)], what it printed. reporting: settings
    of config.json's "reporting"."""
    import json
    import mgm_payloads
    payloads = [mgm_payloads.zcl_payload(seq=k & 0xFF, import_raw=5000 + k, export_raw=7, demand_raw=500)
                for k in range(len(failures))]
    (tmp_path / "payloads.hex").write_text(" ".join(p.hex() for p in payloads))
    script = tmp_path / "no_memory.py"
    script.write_text(NO_MEMORY_SCRIPT % (json.dumps(reporting or {}), list(failures)))
    p = sim_env.run_micropython(script, tmp_path, PATH, timeout=30)
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, p.stdout + p.stderr
    return json.loads(line[0][7:]), p.stdout


def test_a_reading_that_finds_no_memory_is_skipped_in_words_and_the_next_one_goes_on(tmp_path):
    # The filter needs 3 agreeing readings before a first total; then some readings find no memory
    # to be published in (1 or all of their publishes), then memory is back.
    fails = [0, 0, 0, 0, 1, 5, 2, 0, 0]
    got, said = run_no_memory(tmp_path, fails)
    assert [res for res, _, _ in got] == ["ok"] * len(fails)  # no restart of the firmware for it
    published = [v for _, v, _ in got]
    assert published[7] is not None and published[8] is not None
    assert int(published[8]) > int(published[7])  # the series goes on after the skipped ones
    totals = [int(v) for v in published if v is not None]
    assert totals == sorted(totals)
    assert said.count("not enough free memory for publishing readings now") == 1, said
    assert "DIAG skipped_no_memory=3" in said, said  # HA's diagnostics count them


def test_readings_that_never_find_memory_end_in_a_clean_restart(tmp_path):
    # 10 minutes of the device's time without memory for any reading (0.6 s here): this heap will
    # not recover by itself. A restart, said in words, and not a crash (main.py's crash policy
    # could stop the app for good after 3 of them: a long broker outage must never do that).
    got, said = run_no_memory(tmp_path, [0, 0, 0, 0] + [99] * 20)
    results = [res for res, _, _ in got]
    assert results[-1] == "restart 3", results
    assert "raised" not in results
    assert 4 + 5 <= len(results) - 1 <= 4 + 8, results  # about 0.6 s of readings 0.1 s apart
    assert "no free memory for publishing readings for 10 minutes: restarting" in said


def test_a_value_skipped_for_want_of_memory_goes_out_with_the_next_reading(tmp_path):
    # Power is sent only when it changes by power_min_change_w, totals every energy_interval_s: a
    # value that found no memory was never sent, so the next reading sends it, not only the next
    # change or interval.
    got, said = run_no_memory(tmp_path, [0, 0, 0], {"power_min_change_w": 50})
    assert [w for _, _, w in got] == ["500", None, None]  # unchanged: not sent again
    got, said = run_no_memory(tmp_path, ["/power", 0, 0], {"power_min_change_w": 50})
    assert [w for _, _, w in got] == [None, "500", None]  # skipped, then sent
    got, said = run_no_memory(tmp_path, [0, 0, 0, 0], {"energy_interval_s": 3600})
    assert [v for _, v, _ in got] == [None, None, "5002", None]  # the first total, then the hour's wait
    got, said = run_no_memory(tmp_path, [0, 0, "/energy/in", 0, 0], {"energy_interval_s": 3600})
    assert [v for _, v, _ in got] == [None, None, None, "5003", None]


HOUSEKEEPING_SCRIPT = r"""
import asyncio, json, sys
import app
import config
import null_board

opts = json.loads(%r)
FAIL = MemoryError("memory allocation failed")


class Wifi(null_board.Wifi):
    checks = 0

    def check(self):
        Wifi.checks += 1
        if Wifi.checks in opts.get("wifi_fail_checks", ()):
            raise FAIL
        return True


null_board.Wifi = Wifi
cfg = config.defaults()
cfg["mqtt"]["host"] = "127.0.0.1"
cfg["debug"]["time_scale"] = 1000  # app.NO_MEMORY_S (10 minutes) is 0.6 s here
a = app.App(cfg, null_board)


async def broker(network_up):  # as if the broker were there (housekeeping publishes), or down
    a.mqtt.connected = opts.get("connected", True)
    while True:
        await asyncio.sleep_ms(1000)


a.mqtt.run = broker
a.mqtt.publish = lambda t, p, retain=False: published.append(t)
published = []
real = a._diag
fails = [opts.get("diag_fails", 0)]


def diag():
    if fails[0]:
        fails[0] -= 1
        raise FAIL
    return real()


a._diag = diag
if opts.get("install_fails"):  # an install asked for, with never the memory to start it
    a.ota_start = object()

    def start():
        raise FAIL
    a._start_install = start
announced = []


def discovery(only, dev):  # an announcement of 3 entities; the first dies in its own handler
    announced.append(only)
    a.announced_dev, a.announced_exp, a.announced_export = dev, a._expire_after(), "export" in a.has
    for k in range(opts.get("entities", 3)):
        if k == 1 and opts.get("discovery_dies") and len(announced) == 1:
            raise FAIL
        yield "entity %%d" %% k


a._discovery = discovery


def result():
    return "diag published %%d times, announcements %%s, ota loaded %%s" %% (
        published.count(a.base + "/diag"), announced, "ota" in sys.modules)


try:
    asyncio.run(asyncio.wait_for(a.main(), opts.get("seconds", 2)))
    print("RESULT returned")
except asyncio.TimeoutError:
    print("RESULT running, " + result())
except SystemExit as e:
    print("RESULT restart %%s, " %% e + result())
"""


def run_housekeeping(tmp_path, **opts):
    """app.App's housekeeping under MicroPython for opts["seconds"] (2) with faults: diag_fails
    (the diag finds no memory that many times), wifi_fail_checks (those steps find none at their
    start), install_fails, entities (3: announced one a step), discovery_dies, connected (False:
    the broker is down) -> what it printed."""
    import json
    script = tmp_path / "housekeeping.py"
    script.write_text(HOUSEKEEPING_SCRIPT % json.dumps(opts))
    p = sim_env.run_micropython(script, tmp_path, PATH, timeout=30)
    return p.stdout + p.stderr


def test_a_diag_that_finds_no_memory_waits_for_the_next_step_instead_of_crashing(tmp_path):
    out = run_housekeeping(tmp_path, diag_fails=2)
    assert "RESULT running, diag published" in out and "Traceback" not in out, out
    assert "RESULT running, diag published 0 times" not in out, out
    assert out.count("not enough free memory for housekeeping") == 1, out


def test_housekeeping_that_never_finds_memory_ends_in_a_clean_restart(tmp_path):
    # The diag never goes out (tried again at every step), or an update never finds the memory to
    # start in: 10 minutes of the device's time (0.6 s here) of it is a restart, said in words.
    for opts in ({"diag_fails": 10 ** 6}, {"install_fails": True}):
        out = run_housekeeping(tmp_path, **opts)
        assert "RESULT restart 3" in out and "Traceback" not in out, (opts, out)
        assert "no free memory for housekeeping (diagnostics, update state, saving, installing) for 10 " \
               "minutes: restarting" in out, out


def test_a_step_without_memory_now_and_then_is_no_reason_to_restart(tmp_path):
    # Steps 2 and 6 find no memory, the others do; with the broker up (the diag goes out) or down
    # (nothing to publish, the steps still pass): the device keeps running.
    for connected in (True, False):
        out = run_housekeeping(tmp_path, wifi_fail_checks=[2, 6], connected=connected, seconds=4)
        assert "RESULT running" in out and "Traceback" not in out, (connected, out)
        assert out.count("not enough free memory for housekeeping") == 2, out


def test_a_step_without_memory_still_unloads_what_it_no_longer_needs(tmp_path):
    # The update code loaded to publish the update entity's state (at the first step) is unloaded
    # even though the step's diag found no memory, and no later step finds any: it is that memory
    # the next steps need.
    out = run_housekeeping(tmp_path, diag_fails=1, entities=0, wifi_fail_checks=list(range(2, 99)))
    assert "RESULT restart 3" in out and "ota loaded False" in out, out


def test_an_announcement_cut_short_by_memory_is_made_again_whole(tmp_path):
    # The announcement's generator died of a MemoryError (its own handler found no memory):
    # entities would stay unannounced until the next reconnect. All of them again, once.
    out = run_housekeeping(tmp_path, discovery_dies=True)
    assert "RESULT running" in out and "announcements [0, 0]" in out and "Traceback" not in out, out
    out = run_housekeeping(tmp_path)
    assert "RESULT running" in out and "announcements [0]" in out, out
