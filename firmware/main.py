# Boot: load the configuration (safe mode on error: the REPL stays usable), then run the app.
import sys

import board as _board
import log


def safe_mode(errors):
    print()
    print("=" * 60)
    print("SAFE MODE: config.json cannot be used, the firmware is not running.")
    for e in errors:
        print("  - " + e)
    print("Fix it on your computer and push it with `make config`,")
    print("or on the device: mpremote edit :config.json, then reset.")
    print("=" * 60)


def main():
    b = _board.load()
    import config
    cfg, errors = config.load_file("config.json", "secrets.json", b.NAME)
    # The schema and checks are only needed at boot: give their ~8 KB of heap back to the app.
    del config
    del sys.modules["config"]
    if errors:
        safe_mode(errors)
        if b.NAME == "unix":
            sys.exit(2)
        return  # on the ESP32: back to the REPL, no boot loop
    import app
    a = app.App(cfg, b)
    try:
        import asyncio
        asyncio.run(a.main())
    except KeyboardInterrupt:
        a.shutdown()
        log.info("stopped")
    except Exception as e:  # a bug: say so, then restart (the watchdog would too, later)
        sys.print_exception(e)
        a.shutdown()
        if note_crash() >= 3:
            # Three crashes without 10 good minutes between them: a restart loop helps nobody.
            log.error("crashed 3 times in a row (%s): staying in the REPL; see crash.log" % e)
            return
        log.error("crashed: %s; restarting" % e)
        b.reset()


def note_crash():
    """Count consecutive crashes in crash.log (the app removes it after 10 good minutes)."""
    try:
        with open("crash.log") as f:
            n = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        n = 0
    try:
        with open("crash.log", "w") as f:
            f.write("%d crashes in a row\n" % (n + 1))
    except OSError:
        pass
    return n + 1


main()
