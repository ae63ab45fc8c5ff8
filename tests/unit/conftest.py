# CPython only: the unit modules import firmware and sim modules by bare name, as MicroPython
# does with MICROPYPATH=firmware:sim:... (see tests/test_on_micropython.py).
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _p in ("sim", "firmware"):
    _d = os.path.join(ROOT, _p)
    if _d not in sys.path:
        sys.path.insert(0, _d)

# umqtt.simple (build/lib, `make deps`) is MicroPython code: on CPython its u-modules are the
# standard ones, so the CONNECT that mqtt_connect.py has it write is checked here too.
import binascii  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402

sys.modules.setdefault("usocket", socket)
sys.modules.setdefault("ustruct", struct)
sys.modules.setdefault("ubinascii", binascii)
_lib = os.path.join(ROOT, "build", "lib")
if _lib not in sys.path:
    sys.path.append(_lib)
