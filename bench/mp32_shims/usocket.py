# umqtt.simple imports `usocket`; the u-alias only finds built-in modules, not bench/mp32_shims/socket.py.
from socket import *  # noqa: F401,F403
