"""The capture file (README, "Reverse engineering"): JSON lines, one raw reading payload per line.

    {"t": "2023-12-08T08:55:46.120Z", "hex": "000000000001e240...", "mgm_version": 2, "src": "mqtt"}

and, in MGM log mode, one record per received-message line of the module's log (its ZCL bytes):

    {"t": "2023-12-08T08:55:46.100Z", "cmd": "rx", "cluster": "0702", "hex": "18b70100...", ...}

Written by tools/capture.py, read by tools/find_fields.py. Also parses the timestamped logs of
terminal programs (protocol.md "Captures"), so find_fields.py can take such a log directly.
"""
import binascii
import datetime
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "firmware"))

from decoders import DecodeError, mgm_log  # noqa: E402
from mgm_uart import CMD_READING, CMD_VERSION, FrameParser  # noqa: E402

RX = "rx"  # the "cmd" of a received-message record

SAMPLE = ('{"t": "2023-12-08T08:55:46Z", "hex": "0000000000012d6a...00", "mgm_version": 2, '
          '"src": "mqtt"}')
LOG_SAMPLE = ('"2023-12-08 08:55:46",2401729800000000...0D"2023-12-08 08:55:56",24017298...0D\n'
              '  or one frame per line:  "2023-12-08 08:55:46",2401729800000000...0D')


class CaptureError(ValueError):
    """A capture or log that cannot be read; the message says where and shows what was expected."""


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def format_time(dt):
    """ISO 8601; aware times are written in UTC with Z, naive ones (a log's local clock) as is."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        zone = "Z"
    else:
        zone = ""
    spec = "milliseconds" if dt.microsecond else "seconds"
    return dt.isoformat(timespec=spec) + zone


def parse_time(text):
    """ISO 8601 (with 'Z', an offset, or naive) -> naive datetime; aware times become UTC."""
    s = text.strip()
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    dt = datetime.datetime.fromisoformat(s)
    if dt.tzinfo is not None:
        dt = dt.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return dt


def record(t, payload, mgm_version=None, src=None, **extra):
    rec = {"t": format_time(t) if isinstance(t, datetime.datetime) else t,
           "hex": binascii.hexlify(bytes(payload)).decode(), "mgm_version": mgm_version}
    if src:
        rec["src"] = src
    rec.update(extra)
    return rec


def dump(rec, stream):
    stream.write(json.dumps(rec, separators=(", ", ": ")) + "\n")
    stream.flush()


def rx_record(t, cluster, zcl, mgm_version=None, src=None, **extra):
    """A received-message line of the module's log: its cluster and ZCL bytes."""
    rec = {"t": format_time(t) if isinstance(t, datetime.datetime) else t, "cmd": RX,
           "cluster": "%04x" % cluster, "hex": binascii.hexlify(bytes(zcl)).decode(),
           "mgm_version": mgm_version}
    if src:
        rec["src"] = src
    rec.update(extra)
    return rec


class RxLine:
    __slots__ = ("time", "cluster", "zcl", "mgm_version")

    def __init__(self, time, cluster, zcl, mgm_version):
        self.time = time  # naive datetime
        self.cluster = cluster
        self.zcl = zcl
        self.mgm_version = mgm_version


class Frame:
    __slots__ = ("time", "payload", "mgm_version")

    def __init__(self, time, payload, mgm_version):
        self.time = time  # naive datetime
        self.payload = payload
        self.mgm_version = mgm_version


def _bad(path, lineno, why, line):
    shown = line if len(line) <= 100 else line[:100] + "..."
    return CaptureError("%s line %d: %s\n  found:    %s\n  expected: one JSON object per line, "
                        "e.g.\n            %s\n  (or a terminal log: %s)"
                        % (path, lineno, why, shown, SAMPLE, LOG_SAMPLE))


def read_jsonl(path, text, want=None):
    """The reading frames of a capture file; with want=RX its received-message records instead."""
    frames = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise _bad(path, lineno, "not JSON", line)
        if not isinstance(rec, dict) or "t" not in rec or "hex" not in rec:
            raise _bad(path, lineno, 'needs the keys "t" and "hex"', line)
        if rec.get("cmd", "r") != (want or "r"):
            continue
        try:
            t = parse_time(str(rec["t"]))
        except ValueError:
            raise _bad(path, lineno, 'unreadable time "t"', line)
        try:
            payload = binascii.unhexlify(str(rec["hex"]).replace(" ", ""))
        except (binascii.Error, ValueError):
            raise _bad(path, lineno, '"hex" is not hex', line)
        if want == RX:
            try:
                cluster = int(str(rec.get("cluster")), 16)
            except ValueError:
                raise _bad(path, lineno, 'an "rx" record needs "cluster" (4 hex digits, e.g. "0702")', line)
            frames.append(RxLine(t, cluster, payload, rec.get("mgm_version")))
            continue
        frames.append(Frame(t, payload, rec.get("mgm_version")))
    return frames


# One entry of a terminal log: a timestamp, optionally quoted, then the bytes in hex (spaces between
# bytes allowed, but not newlines: the next line's timestamp must not be read as hex).
_ENTRY = re.compile(r'"?\[?(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?)\]?"?[ \t]*[,;]?[ \t]*'
                    r'((?:[0-9A-Fa-f]{2}[ ]?)+)')


# A received-message line logged as text, after a timestamp.
_RX_TEXT = re.compile(r'"?\[?(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?)\]?"?[ \t]*[,;]?[ \t]*'
                      r'(\S*RX len [^\r\n]*)')


def parse_log(text, mgm_version=None):
    """A terminal program's timestamped log -> [(naive datetime, payload bytes, mgm_version)].

    All entries form one byte stream (a frame may be split across entries); a frame gets the time
    of the entry that completes it. A version ('f') response seen in the log sets mgm_version for
    the readings after it.
    """
    return parse_log_all(text, mgm_version)[0]


def parse_log_all(text, mgm_version=None):
    """-> (reading frames as parse_log gives them, [(time, cluster, ZCL bytes, mgm_version)] of the
    module's received-message lines). Those lines are found in the hex byte stream (a sniffer logs
    the module's text as bytes) and as text after a timestamp. Key Establishment lines (key
    material) are left out."""
    out = []
    rx = []
    state = {"t": None, "version": mgm_version}
    line = mgm_log.RxLine(255)

    def on_frame(cmd, payload):
        if cmd == CMD_VERSION and len(payload) == 1:
            state["version"] = payload[0]
        elif cmd == CMD_READING:
            out.append((state["t"], bytes(payload), state["version"]))

    def on_log(buf, start, end):
        try:
            n = mgm_log.parse(buf, start, end, line)
        except DecodeError:
            return
        if n >= 0 and line.cluster != mgm_log.KEY_ESTABLISHMENT:
            rx.append((state["t"], line.cluster, bytes(line.zcl[:n]), state["version"]))

    for m in _RX_TEXT.finditer(text):
        t = datetime.datetime.fromisoformat(m.group(1).replace(",", ".").replace(" ", "T"))
        try:
            got = mgm_log.parse_text(m.group(2))
        except DecodeError:
            continue
        if got is not None and got[0] != mgm_log.KEY_ESTABLISHMENT:
            rx.append((t, got[0], got[1], mgm_version))
    parser = FrameParser(on_frame, on_log)
    for m in _ENTRY.finditer(text):
        # No parser.idle() when the time changes: a frame can straddle a second boundary; a
        # truncated one is dropped by the parser's resync anyway.
        stamp = m.group(1).replace(",", ".")
        state["t"] = datetime.datetime.fromisoformat(stamp.replace(" ", "T"))
        parser.feed(binascii.unhexlify(m.group(2).replace(" ", "")))
    parser.idle()
    rx.sort(key=lambda r: r[0])
    return out, rx


def read_capture(path):
    """The reading frames of a capture file (or of a terminal log) as [Frame], in file order."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CaptureError("cannot read %s: %s" % (path, e.strerror or e))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CaptureError("%s is not text (binary?)\n  expected: one JSON object per line, e.g.\n"
                           "            %s" % (path, SAMPLE))
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), "")
    if not first:
        raise CaptureError("%s is empty\n  expected: one JSON object per line, e.g.\n            %s"
                           % (path, SAMPLE))
    if not first.startswith("{") and _ENTRY.search(text):
        frames = [Frame(t, p, v) for t, p, v in parse_log(text)]
        if not frames:
            raise CaptureError("%s looks like a terminal log but holds no reading frame "
                               "(24 01 72 <len> ... 0D)\n  expected: %s" % (path, LOG_SAMPLE))
        return frames
    frames = read_jsonl(path, text)
    if not frames:
        raise CaptureError("%s holds no reading records\n  expected: one JSON object per line, "
                           "e.g.\n            %s" % (path, SAMPLE))
    return frames


def read_rx(path):
    """The module's received-message lines in a capture file or terminal log, as [RxLine] in time
    order ([] when it holds none)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise CaptureError("cannot read %s: %s" % (path, e.strerror or e))
    except UnicodeDecodeError:
        raise CaptureError("%s is not text (binary?)" % path)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), "")
    if first.startswith("{"):
        lines = read_jsonl(path, text, RX)
    else:
        lines = [RxLine(t, c, z, v) for t, c, z, v in parse_log_all(text)[1]]
    lines.sort(key=lambda r: r.time)
    return lines
