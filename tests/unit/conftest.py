# CPython only: the unit modules import firmware and tools modules by bare name, as MicroPython
# does with MICROPYPATH=firmware:tools:... (see tests/test_on_micropython.py).
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _p in ("tools", "firmware"):
    _d = os.path.join(ROOT, _p)
    if _d not in sys.path:
        sys.path.insert(0, _d)
