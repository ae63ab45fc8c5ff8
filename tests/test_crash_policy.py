"""The watchdog, the REPL and the crash policy, as on the ESP32: its watchdog cannot be stopped and
resets the board when nobody feeds it. The unix board's watchdog does the same (board/unix.py), so
these tests see what the device does: on the simulated board (the unix port behind the real
mpremote, tests/devices) and under the unix runner (sim/run_sim.py)."""
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

import sim_env
from test_flash import (board_flash, fwdir, run, running, sims, write_config,  # noqa: F401 (fixtures)
                        set_version)

ROOT = sim_env.ROOT
sys.path.insert(0, os.path.join(ROOT, "sim"))
import run_sim  # noqa: E402

WDT_S = 5  # the app's watchdog under debug.time_scale 50 (30 s on the device)

# A Wi-Fi driver that fails (or hangs) after a few checks: the real app, stopped by a fault.
FAULT = '''

_Wifi = Wifi


class Wifi(_Wifi):
    checks = 0

    def check(self):
        Wifi.checks += 1
        if Wifi.checks == 3:
            if %r:
                time.sleep(3600)  # a driver call that never returns
            raise OSError("wifi driver fault")
        return True
'''


def add_fault(board_dir, hang=False):
    with open(os.path.join(board_dir, "unix.py"), "a") as f:
        f.write(FAULT % hang)


def mp(sim, *args, resume=True, timeout=30):
    cmd = [sys.executable, "-m", "mpremote", "connect", sim.path] + (["resume"] if resume else [])
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


# ---- the REPL after the app stops --------------------------------------------------------------
def test_the_repl_stays_usable_after_ctrl_c_for_longer_than_the_watchdog_timeout(running):
    sim = running
    resets = list(sim.board.resets)
    r = mp(sim, "exec", "print('an' + 'swer')")  # mpremote's Ctrl-C stops the app first
    assert "answer" in r.stdout, r.stdout + r.stderr
    sim.board.wait_console(rb"The app is stopped; the REPL is yours")
    time.sleep(WDT_S + 3)
    r = mp(sim, "exec", "print('still ' + 'here')")
    assert "still here" in r.stdout, r.stdout + r.stderr
    assert sim.board.resets == resets and b"watchdog:" not in sim.board.console


def test_the_repl_stays_usable_after_a_soft_reset(running):
    sim = running
    resets = list(sim.board.resets)
    # Without `resume`, mpremote soft-resets the board (Ctrl-D in the raw REPL): the watchdog
    # runs on, main.py does not run, boot.py does and takes the watchdog over.
    r = mp(sim, "exec", "print('an' + 'swer')", resume=False)
    assert "answer" in r.stdout, r.stdout + r.stderr
    time.sleep(WDT_S + 3)
    r = mp(sim, "exec", "import sys; print('app on ' + sys.path[0])")
    assert "app on " in r.stdout and "app_a" in r.stdout, r.stdout + r.stderr  # boot.py's sys.path
    assert sim.board.resets == resets + ["soft"], sim.board.resets
    assert b"watchdog:" not in sim.board.console


def test_without_boot_py_the_watchdog_resets_the_board_after_a_soft_reset(running):
    # What the device did before boot.py existed: the simulated board must show it too.
    sim = running
    os.remove(os.path.join(sim.fsdir, "boot.py"))
    r = mp(sim, "exec", "print('an' + 'swer')", resume=False)
    assert "answer" in r.stdout, r.stdout + r.stderr
    sim.board.wait_console(rb"watchdog: not taken over after the soft reset", timeout=WDT_S + 10)
    assert "watchdog after a soft reset" in sim.board.resets


# ---- the unix board's watchdog -------------------------------------------------------------------
WDT_SCRIPT = r"""
import sys, time
import board.unix as b
mode = sys.argv[1]
feeding = False
if mode == "idle in the REPL":
    b.start_feeder(1000)
elif mode == "app feeds":
    w = b.Watchdog(1000)
    feeding = True
elif mode == "app takes over, then stops feeding":
    b.start_feeder(1000)
    w = b.Watchdog(1000)
elif mode == "app stopped, feeder back":
    w = b.Watchdog(1000)
    b.start_feeder()
elif mode == "stuck in a C call":
    w = b.Watchdog(1000)
    import select
    select.poll().poll(60000)
t = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t) < 3000:
    if feeding:
        w.feed()
    time.sleep_ms(100)
print("alive after 3 s")
"""


@pytest.mark.parametrize("mode, survives", [
    ("idle in the REPL", True), ("app feeds", True), ("app stopped, feeder back", True),
    ("app takes over, then stops feeding", False), ("stuck in a C call", False)])
def test_the_unix_watchdog_resets_the_process_as_the_esp32s_resets_the_board(tmp_path, mode, survives):
    script = tmp_path / "wdt.py"
    script.write_text(WDT_SCRIPT)
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([sim_env.FIRMWARE, ".frozen"]))
    p = subprocess.run([sim_env.micropython(), str(script), mode], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=30)
    if survives:
        assert p.returncode == 0 and "alive after 3 s" in p.stdout, p.stdout + p.stderr
    else:
        assert p.returncode == -9, p.stdout + p.stderr  # SIGKILL: the runner's "watchdog reset"
        assert "watchdog: not fed for 1000 ms: resetting the board" in p.stdout
        assert "alive" not in p.stdout  # reset well before the 3 s were up
    assert -9 in run_sim.RESTART


# ---- the crash policy -------------------------------------------------------------------------
@pytest.fixture
def faulty_runner(tmp_path):
    """A copy of the firmware, first on MICROPYPATH, to put a fault in."""
    d = tmp_path / "faulty"
    shutil.copytree(sim_env.FIRMWARE, d,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return d


def test_the_runner_restarts_after_a_crash_and_stops_after_the_third(tmp_path, mgm, broker, faulty_runner):
    add_fault(faulty_runner / "board")
    sim = mgm(8)
    cfg = sim_env.firmware_config(sim.path, broker.port, debug={"time_scale": 50})
    wd = str(tmp_path / "fw")
    said = []
    status = run_sim.supervise(lambda: sim_env.start_firmware(wd, cfg, mpy_dir=str(faulty_runner)),
                               threading.Event(), time.time() + 60, said.append)
    assert status == 4, said
    assert said == ["the firmware asked for a restart: restarting it, as the device would"] * 2 + [
        "firmware exited with status 4, the firmware gave up after crashing repeatedly (see crash.log): "
        "not restarting it (the device stays in its REPL)"]
    log = open(os.path.join(wd, "crash.log")).read()
    assert log.startswith("3 crashes in a row") and "OSError: wifi driver fault" in log


def test_a_stuck_app_is_reset_by_the_watchdog(tmp_path, mgm, broker, faulty_runner):
    add_fault(faulty_runner / "board", hang=True)
    sim = mgm(8)
    cfg = sim_env.firmware_config(sim.path, broker.port, debug={"time_scale": 50})
    p = sim_env.start_firmware(str(tmp_path / "fw"), cfg, mpy_dir=str(faulty_runner))
    out, _ = p.communicate(timeout=60)
    assert p.returncode == -9, out
    assert b"watchdog: not fed for %d ms: resetting the board" % (WDT_S * 1000) in out
    assert run_sim.RESTART[-9] == "the watchdog reset the firmware"


@pytest.fixture
def crashing(run, sims, fwdir, mgm, broker):
    """A board whose app (deployed by `make deploy`) crashes 1.5 s after each start."""
    meter = mgm(8)
    write_config(fwdir, mqtt={"host": "127.0.0.1", "port": broker.port}, uart={"device": meter.path},
                 meter={"poll_interval_s": 5, "startup_delay_s": 0}, debug={"time_scale": 50})
    add_fault(fwdir / "board")
    sim = sims(flash=board_flash(), in_rom=False)
    r = run("deploy", sim)
    assert r.returncode == 0, r.out
    return sim


def test_giving_up_leaves_a_stable_reachable_board_that_says_why(crashing):
    sim = crashing
    sim.board.wait_console(rb"The app crashed 3 times in a row \(the last time: OSError\('wifi driver fault'",
                           timeout=60)
    crash_log = os.path.join(sim.fsdir, "crash.log")
    sim.board.wait_console(rb"The errors are in " + crash_log.encode())
    resets = list(sim.board.resets)
    assert resets.count("hard reset (status -9)") == 2  # two restarts, then it stays
    time.sleep(WDT_S + 3)
    assert sim.board.resets == resets and b"watchdog:" not in sim.board.console
    r = mp(sim, "exec", "print(open('crash.log').read())")
    assert "3 crashes in a row" in r.stdout and "OSError: wifi driver fault" in r.stdout, r.stdout
    # The friendly REPL reminds why at every prompt (mpremote went back to it on leaving).
    sim.board.wait_console(rb"\[app stopped after 3 crashes: see crash.log\] >>> ")
    # RESET gives the app one more try.
    mark = len(sim.board.console)
    sim.board.power_cycle()
    sim.board.wait_console(rb"The app crashed 4 times in a row", start=mark, timeout=30)
