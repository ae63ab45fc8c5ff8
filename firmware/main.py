# Boot: load the configuration (safe mode on error: the REPL stays usable), then run the app.
import sys

import board as _board
import config
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
    cfg, errors = config.load_file("config.json", "secrets.json", b.NAME)
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
        log.error("crashed: %s; restarting" % e)
        a.shutdown()
        b.reset()


main()
