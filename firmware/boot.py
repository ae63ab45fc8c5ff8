# Runs first on every boot and soft reset; after a soft reset in the raw REPL (what mpremote does)
# it is the only file that runs. The watchdog survives a soft reset and cannot be stopped, so this
# is where its feeder starts: the REPL stays usable. Nothing is left in the REPL's globals.
try:
    import loader

    loader.boot()
    del loader
except Exception as e:  # never stop a boot: the REPL must come up
    print("boot.py: %r; run `make deploy`" % e)
