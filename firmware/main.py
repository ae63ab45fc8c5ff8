# Runs after boot.py on every reset (and after a soft reset outside the raw REPL). Kept tiny and
# stable: the work is in loader.py beside it; the app itself is in the slot app.json names.
import loader

loader.main()
