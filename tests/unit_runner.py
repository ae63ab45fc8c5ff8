# Runs one tests/unit test module without pytest, for the MicroPython unix port:
#   MICROPYPATH=firmware:sim:build/lib:tests/unit:.frozen micropython tests/unit_runner.py FILE
# Every test_* function is called without arguments; prints "N passed, M failed", exits 1 on failure.
import sys


def _print_exc(e):
    if hasattr(sys, "print_exception"):  # MicroPython
        sys.print_exception(e)
    else:
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__)


def main(path):
    slash = path.rfind("/")
    folder = path[:slash] if slash >= 0 else "."
    name = path[slash + 1:]
    if name.endswith(".py"):
        name = name[:-3]
    if folder not in sys.path:
        sys.path.insert(0, folder)
    mod = __import__(name)
    passed = 0
    failed = []
    for attr in sorted(dir(mod)):
        fn = getattr(mod, attr)
        if not attr.startswith("test_") or not callable(fn):
            continue
        try:
            fn()
            passed += 1
        except Exception as e:  # noqa: BLE001 - a runner reports every failure
            failed.append(attr)
            print("FAIL %s.%s: %s: %s" % (name, attr, type(e).__name__, e))
            _print_exc(e)
    for attr in failed:
        print("failed: " + attr)
    print("%d passed, %d failed" % (passed, len(failed)))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: micropython tests/unit_runner.py tests/unit/test_x.py")
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
