#!/usr/bin/env python3
"""Decode MGM111 frames or payloads pasted from a log.

    python tools/decode.py HEX...          one input per argument
    python tools/decode.py 24 01 72 ...    (unquoted bytes: all arguments form one input)
    python tools/decode.py < capture.txt   one input per line

An input is a whole frame (24 01 <cmd> <len> ... 0D, several in a row are fine) or a bare reading
payload, as hex with or without spaces, colons or dots; surrounding log text is ignored. The
"Meter Response Bytes N to M: xx xx xx xx" lines that ESPHome-based firmwares print (all-zero
groups left out) are put back together into one payload, as are the capture logs of the form
"YYYY-MM-DD HH:MM:SS",2401...0D.

Prints one JSON object per decoded item with at least the keys format, watts, import_wh,
export_wh, multiplier, divisor, error. Exit status: 0 all decoded, 1 some input failed, 2 usage.
The install code is a secret: it is shown only with --show-secret.
"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "firmware"))

import decoders  # noqa: E402
from mgm_uart import (CMD_ERROR, CMD_INSTALL_CODE, CMD_JOIN, CMD_MAC, CMD_READING,  # noqa: E402
                      CMD_VERSION, FrameParser)

USAGE = ("usage: decode.py [--show-secret] [HEX ...]\n"
         "  HEX: a frame (24 01 72 ... 0D) or a bare payload; without HEX, one input per line "
         "on stdin")

_SEP_ONLY = re.compile(r"^[0-9A-Fa-f\s:.,-]*$")
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{2}(?:[ :.]?[0-9A-Fa-f]{2})*")
_GROUP = re.compile(r"Response Bytes\s+(\d+)\s+to\s+(\d+):\s*((?:[0-9A-Fa-f]{2}\s*){1,4})")
_CAPTURE = re.compile(r'"[^"]*",\s*([0-9A-Fa-f]+)')
# Log decorations that look like hex: [12:00:01] [D][tag:12], dates, times of day.
_NOISE = re.compile(r"\[[^\]]*\]|\b\d{4}-\d\d-\d\d\b|\b\d\d?:\d\d:\d\d(?:[.,]\d+)?\b")
V2_LEN = 152


class InputError(ValueError):
    pass


def to_bytes(text):
    """The hex bytes an input line means, ignoring log text around them."""
    text = text.strip()
    caps = _CAPTURE.findall(text)
    if caps:  # "timestamp",HEX entries run together: one byte stream (frames may be split)
        return _unhex("".join(caps))
    if _SEP_ONLY.match(text):
        return _unhex(re.sub(r"[\s:.,-]", "", text))
    runs = _HEX_RUN.findall(_NOISE.sub(" ", text))
    if not runs:
        raise InputError("no hex bytes found")
    framed = [r for r in runs if re.sub(r"[ :.]", "", r).upper().startswith("2401")]
    best = max(framed or runs, key=len)
    return _unhex(re.sub(r"[ :.]", "", best))


def _unhex(digits):
    if not digits:
        raise InputError("no hex bytes found")
    if len(digits) % 2:
        raise InputError("odd number of hex digits (%d): a digit is missing" % len(digits))
    return bytes.fromhex(digits)


def groups_to_payload(lines):
    """'Meter Response Bytes 4 to 7: 00 0f 42 40' lines -> payload bytes, zero groups filled in."""
    chunks = {}
    end = 0
    for line in lines:
        m = _GROUP.search(line)
        first, last = int(m.group(1)), int(m.group(2))
        data = bytes.fromhex(re.sub(r"\s", "", m.group(3)))
        chunks[first] = data
        end = max(end, first + len(data), last + 1)
    if (0 not in chunks or chunks[0][:1] != b"\x18") and end < V2_LEN:
        end = V2_LEN  # the log leaves all-zero groups out; a v2 reading is 152 bytes long
    p = bytearray(end)
    for first, data in chunks.items():
        p[first:first + len(data)] = data
    return bytes(p)


def _empty(**extra):
    d = dict(format=None, watts=None, import_wh=None, export_wh=None, multiplier=None,
             divisor=None, error=None)
    d.update(extra)
    return d


def decode_payload(payload):
    try:
        r = decoders.decode(payload)
    except decoders.DecodeError as e:
        return _empty(error=str(e), raw=payload.hex())
    d = _empty(format=r.format, watts=r.watts, import_wh=r.import_wh, export_wh=r.export_wh,
               multiplier=r.multiplier, divisor=r.divisor)
    if r.format == "v2":
        d.update(net_wh=r.net_wh, meter_ms=r.meter_ms)
    else:
        d["seq"] = r.seq
    return d


def decode_frame(cmd, payload, show_secret):
    if cmd == CMD_READING:
        d = decode_payload(payload)
    else:
        d = _empty()
        try:
            if cmd == CMD_VERSION:
                d.update(format="version", version=decoders.decode_version(payload))
            elif cmd == CMD_MAC:
                d.update(format="mac", mac=decoders.decode_mac(payload))
            elif cmd == CMD_INSTALL_CODE:
                code = decoders.decode_install_code(payload)
                d.update(format="install_code", install_code=code if show_secret else
                         "present (a secret: --show-secret shows it)")
            elif cmd == CMD_JOIN:
                d.update(format="join", join_status=payload[0] if payload else None)
            elif cmd == CMD_ERROR:
                d.update(format="mgm_error", mgm_error_code=payload[0] if payload else None)
            else:
                d.update(error="unknown command byte 0x%02X in the frame" % cmd,
                         raw=payload.hex())
        except decoders.DecodeError as e:
            d["error"] = str(e)
    d["frame"] = chr(cmd) if 0x20 < cmd < 0x7F else "0x%02X" % cmd
    return d


def decode_bytes(b, show_secret=False):
    """One input's bytes -> list of result dicts."""
    if not b.startswith(b"$\x01"):
        return [decode_payload(b)]
    if len(b) >= 4 and len(b) == b[3] + 4:
        b = b + b"\r"  # only the final 0D is missing (cut off when copying): still unambiguous
    frames = []
    parser = FrameParser(lambda cmd, p: frames.append((cmd, bytes(p))))
    parser.feed(b)
    parser.idle()
    out = [decode_frame(cmd, p, show_secret) for cmd, p in frames]
    if not frames:
        return [_empty(error=_frame_problem(b), raw=b.hex())]
    if parser.garbage_bytes or parser.truncated or parser.bad_terminator:
        out.append(_empty(error="%d bytes of this input were not part of a whole frame and were "
                          "ignored" % parser.garbage_bytes))
    return out


def _frame_problem(b):
    if len(b) < 4:
        return "frame is cut short: only %d bytes, the header alone has 4" % len(b)
    total = b[3] + 5
    if len(b) < total:
        return ("frame is cut short: its length byte says %d payload bytes but only %d follow"
                % (b[3], len(b) - 4))
    return ("frame does not end with 0D where its length byte (%d) says it ends: byte %d is %02X"
            % (b[3], total - 1, b[total - 1]))


def _has_data(line):
    # Pasted logs carry plain text lines too: only lines with at least 3 hex bytes are inputs.
    t = line.strip()
    if not t:
        return False
    if _SEP_ONLY.match(t) or _CAPTURE.search(t):
        return True
    return any(len(re.sub(r"[ :.]", "", r)) >= 6 for r in _HEX_RUN.findall(_NOISE.sub(" ", t)))


def inputs_from_lines(lines):
    """Stdin lines -> inputs; consecutive 'Response Bytes' lines form one input."""
    group = []
    for line in lines:
        if _GROUP.search(line):
            group.append(line)
            continue
        if group:
            yield ("groups", group)
            group = []
        if _has_data(line):
            yield ("text", line)
    if group:
        yield ("groups", group)


def main(argv, stdin=sys.stdin, stdout=sys.stdout):
    show_secret = False
    args = []
    for a in argv:
        if a in ("-h", "--help"):
            stdout.write(__doc__)
            return 0
        if a == "--show-secret":
            show_secret = True
        elif a.startswith("-") and len(a) > 1 and not _SEP_ONLY.match(a):
            sys.stderr.write("unknown option %s\n%s\n" % (a, USAGE))
            return 2
        else:
            args.append(a)
    if args:
        # Bytes pasted without quotes arrive as one argument each: they are one input.
        if all(len(a.strip(":,.")) <= 2 for a in args):
            inputs = [("text", " ".join(args))]
        else:
            inputs = [("text", a) for a in args]
    else:
        if stdin.isatty():
            sys.stderr.write(USAGE + "\n")
            return 2
        inputs = list(inputs_from_lines(stdin))
        if not inputs:
            sys.stderr.write("no input on stdin\n" + USAGE + "\n")
            return 2
    failed = False
    for kind, item in inputs:
        try:
            b = groups_to_payload(item) if kind == "groups" else to_bytes(item)
            results = decode_bytes(b, show_secret)
        except InputError as e:
            results = [_empty(error=str(e))]
        for d in results:
            failed = failed or d["error"] is not None
            stdout.write(json.dumps(d) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
