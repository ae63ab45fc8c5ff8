"""A simulated ESP32 on a pseudo-terminal: ROM serial bootloader (+ what esptool's flasher stub
adds) when "held in download mode", otherwise the application in its flash.

Enough of the SLIP protocol for the real esptool 5.x: sync, register reads (chip magic, eFuse MAC,
SPI flash ID via the user-command registers), stub upload (MEM_*, answered with "OHAI" and from
then on stub behaviour), READ_FLASH (stub streaming with acks and MD5 digest), READ_FLASH_SLOW,
FLASH_* and FLASH_DEFL_* writes, SPI_FLASH_MD5, ERASE_FLASH/REGION, baud change, SPI attach/params.

Application mode: if the flash holds a MicroPython image (0xE9 header at 0x1000 containing
b"MicroPython"), the real `micropython` unix port runs behind the pty (micropython_board);
otherwise the "stock firmware" prints a boot line and ignores input.

Two stand-ins for the user's hands (a pty has no reset lines):
- a SYNC frame arriving in application mode enters the bootloader, as if the user held GPIO0 low
  and pressed reset (disabled by enter_rom_on_sync=False: "device not in bootloader mode");
- a Ctrl-C outside any SLIP frame while in the bootloader reboots into the application, as if the
  user released GPIO0 and pressed reset (the bytes go on to the booted interpreter).

Fault knobs for tests: magic (another chip), flash_id (another size), corrupt_reads (the next N
flash reads return one flipped byte, with a digest matching the bad data: a flaky SPI read).
"""
import hashlib
import os
import random
import select
import struct
import sys
import tempfile
import threading
import tty
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from micropython_board import MicroPythonBoard  # noqa: E402

FLASH_SIZE = 0x400000
ESP32_MAGIC = 0x00F01D83
ESP8266_MAGIC = 0xFFF0C101
FLASH_ID_4MB = 0x1640EF  # Winbond W25Q32: manufacturer 0xEF, device 0x4016 -> "4MB"
FLASH_ID_8MB = 0x1740EF

CHIP_MAGIC_REG = 0x40001000
EFUSE_BASE = 0x3FF5A000
SPI_BASE = 0x3FF42000
SPI_CMD_USR = 1 << 18
UART_CLKDIV_REG = 0x3FF40014

OP = dict(FLASH_BEGIN=0x02, FLASH_DATA=0x03, FLASH_END=0x04, MEM_BEGIN=0x05, MEM_END=0x06,
          MEM_DATA=0x07, SYNC=0x08, WRITE_REG=0x09, READ_REG=0x0A, SPI_SET_PARAMS=0x0B,
          SPI_ATTACH=0x0D, READ_FLASH_SLOW=0x0E, CHANGE_BAUDRATE=0x0F, FLASH_DEFL_BEGIN=0x10,
          FLASH_DEFL_DATA=0x11, FLASH_DEFL_END=0x12, SPI_FLASH_MD5=0x13, ERASE_FLASH=0xD0,
          ERASE_REGION=0xD1, READ_FLASH=0xD2)
ROM_INVALID_RECV_MSG = 0x05
MP_IMAGE_OFFSET = 0x1000


def slip(data):
    return b"\xc0" + data.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def stock_flash(seed=1):
    """A plausible stock flash: bootloader-ish header at 0x1000, data regions, erased rest."""
    rnd = random.Random(seed)
    f = bytearray(b"\xff" * FLASH_SIZE)
    f[0x1000:0x1000 + 0x6000] = rnd.randbytes(0x6000)
    f[0x1000] = 0xE9
    f[0x8000:0x8000 + 0xC00] = rnd.randbytes(0xC00)  # partition table, nvs (holds the keys)
    f[0x10000:0x10000 + 0x120000] = rnd.randbytes(0x120000)  # the vendor app
    f[0x10000] = 0xE9
    return f


class Esp32Sim:
    def __init__(self, flash=None, mac=b"\x24\x0a\xc4\x12\x34\x56", magic=ESP32_MAGIC,
                 flash_id=FLASH_ID_4MB, enter_rom_on_sync=True, in_rom=True, fsdir=None):
        self.flash = bytearray(flash if flash is not None else stock_flash())
        assert len(self.flash) == FLASH_SIZE
        self.mac = mac
        self.magic = magic
        self.flash_id = flash_id
        self.enter_rom_on_sync = enter_rom_on_sync
        self.corrupt_reads = 0
        self.writes = 0  # flash-modifying commands seen (tests: "the device was left unchanged")
        self.reads = 0
        self._tmp = None
        if fsdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="esp32sim-fs-")
            fsdir = self._tmp.name
        self.fsdir = fsdir
        self.mode = "rom" if in_rom else "app"
        self.stub = False
        self.board = None
        self.log = []
        self._regs = {}
        self._buf = bytearray()
        self._frame = None  # bytearray while inside a SLIP frame
        self._esc = False
        self._stop = threading.Event()
        self._wlock = threading.Lock()
        self._reading = None  # state of a stub READ_FLASH in progress
        self._write = None  # state of a FLASH_BEGIN / FLASH_DEFL_BEGIN in progress

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        if self.mode == "app":
            self._boot_app(b"")
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(3)
        if self.board:
            self.board.stop()
            self.board = None
        os.close(self.master)
        os.close(self.slave)
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- byte plumbing ----------------------------------------------------------------------
    def _send(self, data, wait=5):
        """Write to the pty master; gives up (drops the rest) if nobody reads for `wait` s."""
        with self._wlock:
            view = memoryview(data)
            while view and not self._stop.is_set():
                _, w, _ = select.select([], [self.master], [], wait)
                if not w:
                    return
                try:
                    n = os.write(self.master, view)
                except BlockingIOError:
                    continue
                view = view[n:]

    def _loop(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.1)
            if not r:
                continue
            try:
                data = os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                continue
            if self.mode == "rom":
                self._rx_rom(data)
            else:
                self._rx_app(data)

    def _rx_app(self, data):
        if self.enter_rom_on_sync and b"\xc0\x00\x08" in data:
            self._enter_rom()
            self._rx_rom(data[data.index(b"\xc0\x00\x08"):])
        elif self.board:
            self.board.write(data)
        # else: the stock firmware ignores what it receives

    def _enter_rom(self):
        if self.board:
            self.board.stop()
            self.board = None
        self.mode, self.stub = "rom", False
        self._frame, self._esc, self._reading, self._write = None, False, None, None
        self.log.append("entered bootloader")

    def _boot_app(self, pending):
        self.mode, self.stub = "app", False
        self.log.append("booted application")
        img = self.flash[MP_IMAGE_OFFSET:MP_IMAGE_OFFSET + 0x200000]
        if img[0] == 0xE9 and b"MicroPython" in img:
            # A UART sends whether anyone listens or not: with nobody reading the pty, the
            # console output is dropped instead of stalling the board (it stays in .console).
            self.board = MicroPythonBoard(self.fsdir, lambda d: self._send(d, wait=1)).start()
            if pending:
                self.board.write(pending)
        else:
            self._send(b"ets Jun  8 2016 00:22:57\r\nrst:0x1 (POWERON_RESET),boot:0x13 "
                       b"(SPI_FAST_FLASH_BOOT)\r\nstock firmware (simulated)\r\n")

    def _rx_rom(self, data):
        for i, b in enumerate(data):
            if self.mode != "rom":  # rebooted into the app: the rest is for it
                return
            if self._frame is None:
                if b == 0xC0:
                    self._frame = bytearray()
                elif b == 0x03:
                    self._boot_app(bytes(data[i:]))
                    return
                continue
            if b == 0xC0:
                if self._frame:
                    frame, self._frame = bytes(self._frame), None
                    self._handle(frame)
                # an empty frame: the 0xC0 was a start byte after all
                continue
            if self._esc:
                self._frame.append({0xDC: 0xC0, 0xDD: 0xDB}.get(b, b))
                self._esc = False
            elif b == 0xDB:
                self._esc = True
            else:
                self._frame.append(b)

    # ---- protocol ---------------------------------------------------------------------------
    def _reply(self, op, data=b"", val=0, status=(0, 0)):
        # ROM status is 4 bytes, the stub's 2; esptool reads the first two after the data.
        st = bytes(status) + (b"" if self.stub else b"\x00\x00")
        body = data + st
        self._send(slip(struct.pack("<BBHI", 1, op, len(body), val) + body))

    def _fail(self, op, reason=ROM_INVALID_RECV_MSG):
        self._reply(op, status=(1, reason))

    def _handle(self, frame):
        if self._reading is not None and len(frame) == 4:  # an ack of a READ_FLASH packet
            self._read_ack(struct.unpack("<I", frame)[0])
            return
        if len(frame) < 8 or frame[0] != 0:
            return
        _, op, size, chk = struct.unpack("<BBHI", frame[:8])
        data = frame[8:8 + size]
        h = getattr(self, "_op_%02x" % op, None)
        if h is None:
            self._fail(op)
            return
        h(op, data)

    def _op_08(self, op, data):  # SYNC: the ROM answers 8 times; a running stub answers val 0
        for _ in range(8):
            self._reply(op, val=0 if self.stub else 0x20120707)

    def _reg(self, addr):
        if addr == CHIP_MAGIC_REG:
            return self.magic
        if addr == UART_CLKDIV_REG:
            return 347  # 40 MHz crystal at 115200 baud
        if addr == EFUSE_BASE + 4:  # BLK0 word 1: MAC bytes 2..5
            return struct.unpack(">I", self.mac[2:6])[0]
        if addr == EFUSE_BASE + 8:  # BLK0 word 2: CRC, MAC bytes 0..1
            return (0x5A << 16) | (self.mac[0] << 8) | self.mac[1]
        return self._regs.get(addr, 0)

    def _op_0a(self, op, data):  # READ_REG
        self._reply(op, val=self._reg(struct.unpack("<I", data[:4])[0]))

    def _op_09(self, op, data):  # WRITE_REG: (addr, value, mask, delay) tuples
        for i in range(0, len(data) - 15, 16):
            addr, value, mask, _ = struct.unpack("<IIII", data[i:i + 16])
            value = (self._regs.get(addr, 0) & ~mask) | (value & mask)
            if addr == SPI_BASE and value & SPI_CMD_USR:
                self._spi_user_command()
                value &= ~SPI_CMD_USR  # "done" at once
            self._regs[addr] = value
        self._reply(op)

    def _spi_user_command(self):
        cmd = self._regs.get(SPI_BASE + 0x24, 0) & 0xFF  # SPI_USR2: command byte
        self._regs[SPI_BASE + 0x80] = self.flash_id if cmd == 0x9F else 0  # W0

    def _op_05(self, op, data):  # MEM_BEGIN (stub upload)
        self._reply(op)

    def _op_07(self, op, data):  # MEM_DATA
        self._reply(op)

    def _op_06(self, op, data):  # MEM_END: "runs" the stub, which greets
        self._reply(op)
        self.stub = True
        self._send(slip(b"OHAI"))

    def _op_0d(self, op, data):  # SPI_ATTACH
        self._reply(op)

    def _op_0b(self, op, data):  # SPI_SET_PARAMS
        self._reply(op)

    def _op_0f(self, op, data):  # CHANGE_BAUDRATE: a pty has no baud rate
        self._reply(op)

    def _size(self):
        return {FLASH_ID_4MB: 0x400000}.get(self.flash_id, 1 << ((self.flash_id >> 16) & 0xFF))

    def _in_range(self, offset, length):
        return 0 <= offset and offset + length <= min(self._size(), FLASH_SIZE)

    def _read(self, offset, length):
        data = bytes(self.flash[offset:offset + length])
        self.reads += 1
        self.log.append("read %#x+%#x" % (offset, length))
        if self.corrupt_reads > 0 and length > 0x2000:
            self.corrupt_reads -= 1
            b = bytearray(data)
            b[length // 2] ^= 0x10
            data = bytes(b)
            self.log.append("corrupted a read")
        return data

    def _op_0e(self, op, data):  # READ_FLASH_SLOW (ROM): 64 bytes per command
        offset, length = struct.unpack("<II", data[:8])
        if not self._in_range(offset, length) or length > 64:
            return self._fail(op, 0x32)
        self._reply(op, bytes(self.flash[offset:offset + length]).ljust(64, b"\xff"))

    def _op_d2(self, op, data):  # READ_FLASH (stub): stream packets, window of unacked ones
        if not self.stub:
            return self._fail(op)
        offset, length, packet, window = struct.unpack("<IIII", data[:16])
        if not self._in_range(offset, length):
            return self._fail(op, 0x32)
        self._reply(op)
        self._reading = dict(data=self._read(offset, length), sent=0, acked=0, packet=packet,
                             window=max(1, window))
        self._read_pump()

    def _read_pump(self):
        r = self._reading
        while r["sent"] < len(r["data"]) and r["sent"] - r["acked"] < r["window"] * r["packet"]:
            chunk = r["data"][r["sent"]:r["sent"] + r["packet"]]
            self._send(slip(chunk))
            r["sent"] += len(chunk)

    def _read_ack(self, acked):
        r = self._reading
        r["acked"] = acked
        if acked >= len(r["data"]):
            self._reading = None
            self._send(slip(hashlib.md5(r["data"]).digest()))
        else:
            self._read_pump()

    def _erase(self, offset, length):
        if not length:  # esptool's FLASH_BEGIN(0, 0) at connect/exit writes nothing
            return
        self.flash[offset:offset + length] = b"\xff" * length
        self.writes += 1
        self.log.append("erase %#x+%#x" % (offset, length))

    def _op_d0(self, op, data):  # ERASE_FLASH (stub)
        if not self.stub:
            return self._fail(op)
        self._erase(0, FLASH_SIZE)
        self._wipe_fs()
        self._reply(op)

    def _op_d1(self, op, data):  # ERASE_REGION (stub)
        offset, length = struct.unpack("<II", data[:8])
        if not self.stub or not self._in_range(offset, length):
            return self._fail(op)
        self._erase(offset, length)
        self._reply(op)

    def _wipe_fs(self):
        # MicroPython keeps its filesystem in flash: erasing the chip loses the files.
        for name in os.listdir(self.fsdir):
            p = os.path.join(self.fsdir, name)
            if os.path.isdir(p):
                import shutil
                shutil.rmtree(p)
            else:
                os.remove(p)

    def _begin(self, op, data, compressed):
        erase, blocks, block, offset = struct.unpack("<IIII", data[:16])
        if not self._in_range(offset, erase):
            return self._fail(op, 0x32)
        self._erase(offset, erase)
        if erase and (offset == 0 or offset + erase > 0x200000):
            self._wipe_fs()
        self._write = dict(offset=offset, pos=offset, block=block,
                           z=zlib.decompressobj() if compressed else None)
        self._reply(op)

    def _op_02(self, op, data):  # FLASH_BEGIN
        self._begin(op, data, False)

    def _op_10(self, op, data):  # FLASH_DEFL_BEGIN
        self._begin(op, data, True)

    def _data(self, op, data, compressed):
        w = self._write
        if w is None or bool(w["z"]) != compressed:
            return self._fail(op)
        size, seq = struct.unpack("<II", data[:8])
        payload = data[16:16 + size]
        if compressed:
            out = w["z"].decompress(payload)
        else:
            out = payload
            w["pos"] = w["offset"] + seq * w["block"]
        if w["pos"] + len(out) > FLASH_SIZE:
            return self._fail(op, 0x32)
        self.flash[w["pos"]:w["pos"] + len(out)] = out
        w["pos"] += len(out)
        self._reply(op)

    def _op_03(self, op, data):  # FLASH_DATA
        self._data(op, data, False)

    def _op_11(self, op, data):  # FLASH_DEFL_DATA
        self._data(op, data, True)

    def _op_04(self, op, data):  # FLASH_END
        self._write = None
        self._reply(op)

    def _op_12(self, op, data):  # FLASH_DEFL_END
        self._write = None
        self._reply(op)

    def _op_13(self, op, data):  # SPI_FLASH_MD5: a fresh read of the flash by the chip
        offset, length = struct.unpack("<II", data[:8])
        if not self._in_range(offset, length):
            return self._fail(op, 0x32)
        digest = hashlib.md5(self.flash[offset:offset + length])
        if self.stub:
            self._reply(op, digest.digest())
        else:
            self._reply(op, digest.hexdigest().encode())


def main():
    """Run a simulated device by hand: prints the pty to give esptool/mpremote."""
    import argparse
    import time
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", action="store_true", help="start in application mode")
    a = ap.parse_args()
    with Esp32Sim(in_rom=not a.app) as sim:
        print(sim.path, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
