# Bytes allocated by repeated calls, for the "allocates nothing per frame/reading" claims of the unit
# tests and the benchmark. MicroPython only: CPython has no gc.mem_alloc.
import gc

MEASURABLE = hasattr(gc, "mem_alloc")


def allocated(fn, n):
    """Bytes allocated by n calls of fn, with the collector off so nothing is freed meanwhile;
    None under CPython."""
    if not MEASURABLE:
        return None
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        for _ in range(n):
            fn()
        return gc.mem_alloc() - before
    finally:
        gc.enable()
