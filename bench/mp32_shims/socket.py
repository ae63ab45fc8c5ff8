# The wasm MicroPython has no socket module. The app imports it (mqtt.py, umqtt.simple) but the
# bench and tests that run under bench/mp32.mjs never connect (their board reports no network):
# a call here means the measured path tried the network.


def _no_network(*args):
    raise OSError("no sockets in the wasm MicroPython (bench/mp32_shims)")


getaddrinfo = socket = _no_network
