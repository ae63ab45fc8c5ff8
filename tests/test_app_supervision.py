"""A task of the app that dies must take the whole app down, so that main.py logs it and restarts
the device. Left alone it would be half-alive for good: readings flowing but, with housekeeping dead,
no diagnostics, no discovery, no watchdog feeding. Runs app.App under the real MicroPython."""
import os
import subprocess

import sim_env

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
    env = dict(os.environ, MICROPYPATH=os.pathsep.join(
        [sim_env.FIRMWARE, os.path.join(sim_env.ROOT, "sim"), sim_env.LIB, ".frozen"]))
    p = subprocess.run([sim_env.micropython(), str(script)], cwd=str(tmp_path), env=env, capture_output=True,
                       text=True, timeout=30)
    assert "RESULT raised wifi driver fault" in p.stdout, p.stdout + p.stderr
