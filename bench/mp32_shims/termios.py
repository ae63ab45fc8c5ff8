# The wasm MicroPython has no termios. firmware/board/unix.py imports it for the pty UART, which
# sim/null_board.py replaces: only the import must succeed.


def _no_tty(*args):
    raise OSError("no termios in the wasm MicroPython (bench/mp32_shims)")


setraw = tcgetattr = tcsetattr = _no_tty
TCSANOW = 0
