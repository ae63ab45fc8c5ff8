# The app's entry point, called by loader.py (main.py) from the active slot: load the configuration
# (safe mode when it cannot be used), then run the App until something stops it.
import gc
import sys

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


def run(b):
    """-> False when the configuration cannot be used; otherwise raises what stopped the app."""
    import config
    cfg, errors = config.load_file("config.json", "secrets.json", b.NAME)
    # The schema and checks are only needed at boot: give their ~8 KB of heap back to the app.
    del config
    del sys.modules["config"]
    if errors:
        safe_mode(errors)
        return False
    gc.collect()  # the config code's heap back in one piece before the app's imports
    import app
    a = app.App(cfg, b)
    try:
        import asyncio
        asyncio.run(a.main())
    except (KeyboardInterrupt, Exception) as e:
        # The app no longer feeds the watchdog: the feeder takes over before the shutdown, which
        # may take seconds (flushing MQTT), and stays on if the board ends up in the REPL.
        b.start_feeder()
        try:
            a.shutdown()
        except Exception as e2:
            log.error("shutdown failed: %r" % e2)
        if isinstance(e, KeyboardInterrupt):
            log.info("stopped")
        raise e
