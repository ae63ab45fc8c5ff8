# The hardware seam: the only place that knows whether we run on the ESP32 or the unix port.
import sys


def load():
    if sys.platform == "esp32":
        from board import esp32 as b
    else:
        from board import unix as b
    return b
