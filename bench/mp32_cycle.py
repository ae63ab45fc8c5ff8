# bench/mpy_cycle.py under the 32-bit MicroPython (bench/mp32.mjs): the same figures. Only here:
# that port collects garbage only when control is back in JavaScript, so a full collection is
# gc.collect() followed by an await (this file's top-level awaits need mp32.mjs).
# Usage: node bench/mp32.mjs --lib <app .mpy> --lib sim/heap_probe.py --lib sim/null_board.py
#        --lib bench/mpy_cycle.py --file FRAME.hex bench/mp32_cycle.py <name> FRAME.hex
import asyncio
import gc
import sys

import mpy_cycle

assert sys.maxsize == 2 ** 31 - 1, "not the 32-bit MicroPython"
c, res = mpy_cycle.measure(sys.argv[1], mpy_cycle.read_frame(sys.argv[2]))
mpy_cycle.cycles(c, 100)
gc.collect()
await asyncio.sleep_ms(1)  # noqa: F704 (top-level await: run by mp32.mjs)
res["heap_100"] = gc.mem_alloc()
mpy_cycle.cycles(c, 9900)
gc.collect()
await asyncio.sleep_ms(1)  # noqa: F704
res["heap_10000"] = gc.mem_alloc()
mpy_cycle.report(c, res)
