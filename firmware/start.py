# The app's entry point, called by loader.py (main.py) from the active slot: load the configuration
# (safe mode when it cannot be used), then run the App until something stops it.
import gc
import sys

import log

# What app.py imports, leaves first (a module missing here is still imported by app.py, just less
# compactly).
LOAD_ORDER = ("mgm_uart", "mgm_link", "decoders", "meter", "readings", "mqtt", "app")


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
    # On probation after an update that brought a configuration: that one (probation.py).
    try:
        import probation
        path = probation.config_path()
        del sys.modules["probation"]
    except ImportError:  # installed by an older make deploy
        path = "config.json"
    if path != "config.json":
        print("boot: on probation with the configuration the update brought (%s)" % path)
    cfg, errors = config.load_file(path, "secrets.json", b.NAME)
    # The schema and checks are only needed at boot: give their ~8 KB of heap back to the app.
    del config
    del sys.modules["config"]
    if errors:
        safe_mode(errors)
        return False
    # The app's modules leaves first, with a collection after each: loading a module leaves holes
    # (temporaries freed between its objects), and collected at once they are filled by the next
    # module's objects. Imported by app.py in one go, the heap held ~18 KB of such holes (64-bit
    # port), too small for a discovery payload or the MQTT buffers: the heap's peak failed first.
    for name in LOAD_ORDER:
        gc.collect()
        __import__(name)
    gc.collect()
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
