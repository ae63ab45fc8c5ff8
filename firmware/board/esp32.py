# ESP32 of the Vue Utility Connect: MGM111 on UART (RX GPIO21, TX GPIO22), LEDs, Wi-Fi, watchdog.
import binascii
import machine
import network
import time

NAME = "esp32"


class Uart:
    def __init__(self, cfg):
        self.cfg = cfg["uart"]
        self.u = None
        self.reinit()

    def reinit(self):
        # Re-creating the UART is how a stuck peripheral is recovered without a reboot.
        if self.u:
            self.u.deinit()
        c = self.cfg
        self.u = machine.UART(2, baudrate=c["baud"], rx=c["rx"], tx=c["tx"], rxbuf=1024, timeout=0)

    def readinto(self, buf):
        if not self.u.any():
            return 0
        return self.u.readinto(buf) or 0

    def write(self, data):
        self.u.write(data)


class Wifi:
    RETRY_MS = (2000, 5000, 15000, 30000, 60000)

    def __init__(self, cfg):
        self.cfg = cfg["wifi"]
        self.wlan = network.WLAN(network.STA_IF)
        self.tries = 0
        self.next_ms = time.ticks_ms()

    def start(self):
        w = self.wlan
        w.active(True)
        try:
            network.hostname(self.cfg["hostname"])
        except (AttributeError, ValueError, OSError):
            pass
        if not self.cfg["power_save"]:
            # Peers traced hourly dropouts and reboots to modem sleep.
            w.config(pm=w.PM_NONE)
        self._connect()

    def _connect(self):
        try:
            self.wlan.disconnect()
        except OSError:
            pass
        self.wlan.connect(self.cfg["ssid"], self.cfg["password"] or "")
        delay = self.RETRY_MS[min(self.tries, len(self.RETRY_MS) - 1)]
        self.tries += 1
        self.next_ms = time.ticks_add(time.ticks_ms(), delay)

    def connected(self):
        return self.wlan.isconnected()

    def check(self):
        """Called often; never blocks. Reconnects with backoff while the link is down."""
        if self.wlan.isconnected():
            self.tries = 0
            return True
        if time.ticks_diff(time.ticks_ms(), self.next_ms) >= 0:
            self._connect()
        return False

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError):
            return None


class Leds:
    # GPIO25 power LED active-high; link (32) and wifi (33) active-low.
    ACTIVE_LOW = ("link", "wifi")

    def __init__(self, cfg):
        self.pins = {}
        for name, pin in cfg["leds"].items():
            if pin >= 0:
                self.pins[name] = machine.Pin(pin, machine.Pin.OUT)
                self.set(name, False)

    def set(self, name, on):
        p = self.pins.get(name)
        if p:
            p.value((not on) if name in self.ACTIVE_LOW else on)


class Watchdog:
    def __init__(self, timeout_ms):
        self.w = machine.WDT(timeout=timeout_ms)

    def feed(self):
        self.w.feed()


def unique_id():
    return binascii.hexlify(machine.unique_id()).decode()


def reset():
    machine.reset()
