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

    def ip(self):
        try:
            return self.wlan.ifconfig()[0] if self.wlan.isconnected() else None
        except OSError:
            return None

    def ssid(self):
        return self.cfg["ssid"]

    def mac(self):
        # HA's device "connections": the Wi-Fi MAC ties the entry to what the router shows.
        try:
            return ":".join("%02x" % b for b in self.wlan.config("mac"))
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


# ---- watchdog ----------------------------------------------------------------------------------
# machine.WDT cannot be stopped, and it keeps running across a soft reset (Ctrl-D, mpremote).
# boot.py starts it with a feeder (a machine.Timer) on every boot, so the REPL stays usable; the
# app takes over the feeding while it runs. The objects live here, out of the REPL's globals
# (mpremote's own helpers define globals such as `w`). Timers are deinitialised by a soft reset.
_wdt = None
_wdt_ms = 0
_timer = None


def _get_wdt(timeout_ms):
    global _wdt, _wdt_ms
    if _wdt is None or timeout_ms != _wdt_ms:
        try:
            # Current ports keep the task-WDT handle in a C static: a second call (after a soft
            # reset) returns a working object and sets the new timeout.
            _wdt = machine.WDT(timeout=timeout_ms)
            _wdt_ms = timeout_ms
        except OSError as e:
            if _wdt is None:  # older ports refuse a second WDT after a soft reset
                print("watchdog: cannot take over the one running since before the soft reset "
                      "(%s): the board will reset by itself within %d s" % (e, timeout_ms // 1000))
    return _wdt


def _feed(t):
    _wdt.feed()


class Watchdog:
    """The app's handle: from now on the app feeds it itself, so a stuck app gets reset."""

    def __init__(self, timeout_ms):
        self.w = _get_wdt(timeout_ms)
        self.feed()
        stop_feeder()

    def feed(self):
        if self.w:
            self.w.feed()


def start_feeder(timeout_ms=30000):
    """Keep the watchdog fed from a timer while no app runs; starts it if it is not running."""
    global _timer
    w = _wdt or _get_wdt(timeout_ms)
    if w is None or _timer is not None:
        return
    w.feed()
    _timer = machine.Timer(0)
    _timer.init(period=1000, mode=machine.Timer.PERIODIC, callback=_feed)


def stop_feeder():
    global _timer
    if _timer is not None:
        _timer.deinit()
        _timer = None


def halt(status):
    """The app will not run again before a reset: stay in the REPL (the feeder runs)."""


def unique_id():
    return binascii.hexlify(machine.unique_id()).decode()


def reset():
    machine.reset()
