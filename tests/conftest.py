"""Shared fixtures: a real mosquitto per test, the simulated MGM111 on a pty, the firmware under the
real MicroPython unix port, and a paho-mqtt client in the role of Home Assistant."""
import os
import sys

import pytest
from hypothesis import settings

# No per-example deadline for any property test: on a loaded 2-core CI machine an example may
# stall past Hypothesis's 200 ms default without a fault in the code.
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in ("tools", "sim", "firmware"):
    if os.path.join(ROOT, p) not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, p))

import sim_env  # noqa: E402
from harness import Firmware, HomeAssistant  # noqa: E402


@pytest.fixture
def broker(tmp_path):
    os.makedirs(tmp_path / "broker", exist_ok=True)
    b = sim_env.Broker(workdir=str(tmp_path / "broker")).start()
    yield b
    b.stop()


@pytest.fixture
def ha(broker):
    h = HomeAssistant(broker.port)
    yield h
    h.stop()


@pytest.fixture
def mgm():
    """Factory: mgm(version=8, ...) -> a started simulator; all stopped at teardown."""
    from mgm_sim import MgmSim
    sims = []

    def make(version=8, **kw):
        s = MgmSim(version=version, **kw)
        s.start()
        sims.append(s)
        return s
    yield make
    for s in sims:
        s.stop()


@pytest.fixture
def firmware(tmp_path, broker):
    """Factory: firmware(sim, **config sections) -> the firmware running under micropython."""
    running = []

    def start(sim, heapsize=None, workdir=None, cfg=None, mpy_dir=None, **sections):
        sections.setdefault("debug", {}).setdefault("time_scale", 50)
        c = cfg if cfg is not None else sim_env.firmware_config(sim.path, broker.port, **sections)
        wd = workdir or str(tmp_path / "fw")
        fw = Firmware(wd, sim_env.start_firmware(wd, c, heapsize=heapsize, mpy_dir=mpy_dir))
        running.append(fw)
        return fw
    yield start
    for fw in running:
        fw.stop()
