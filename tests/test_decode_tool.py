"""tools/decode.py as a user runs it: paste hex, get JSON, exit status says whether all decoded."""
import io
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "decode.py")
sys.path.insert(0, os.path.join(ROOT, "tools"))

import decode  # noqa: E402
from mgm_payloads import frame, install_code_payload, v2_payload, zcl_payload  # noqa: E402

KEYS = {"format", "watts", "import_wh", "export_wh", "multiplier", "divisor", "error"}
EXAMPLE_FRAME = ("24 01 72 2C 18 07 01 00 00 00 25 40 42 0F 00 00 00 01 00 00 25 39 30 00 00 00 "
                 "00 01 03 00 22 01 00 00 02 03 00 22 E8 03 00 00 04 00 2A 06 FF FF 0D")


class Tty(io.StringIO):
    def isatty(self):
        return True


def run(args, stdin=""):
    out = io.StringIO()
    rc = decode.main(args, stdin=io.StringIO(stdin), stdout=out)
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    for o in objs:
        assert KEYS <= set(o), o
    return rc, objs


def test_protocol_md_example_as_a_whole_frame_in_one_argument():
    rc, objs = run([EXAMPLE_FRAME])
    assert rc == 0
    assert len(objs) == 1
    o = objs[0]
    assert (o["format"], o["watts"], o["import_wh"], o["export_wh"]) == ("zcl", -250, 1000000, 12345)
    assert (o["multiplier"], o["divisor"], o["error"]) == (1, 1000, None)


def test_unquoted_bytes_form_one_input():
    rc, objs = run(EXAMPLE_FRAME.split())
    assert rc == 0 and len(objs) == 1 and objs[0]["import_wh"] == 1000000


def test_bare_payload_without_spaces_and_with_colons():
    p = zcl_payload(7, 1000000, 12345, 1, 1000, -250)
    rc, objs = run([p.hex(), ":".join("%02x" % b for b in p)])
    assert rc == 0 and [o["watts"] for o in objs] == [-250, -250]


def test_v2_frame_gives_the_net_counter():
    rc, objs = run([frame(0x72, v2_payload(123456, -250, multiplier=3)).hex()])
    assert rc == 0
    o = objs[0]
    assert (o["format"], o["watts"], o["net_wh"], o["multiplier"]) == ("v2", -750, 370368, 3)
    assert o["import_wh"] is None and o["export_wh"] is None


def test_undecodable_input_exits_1_and_keeps_the_raw_bytes():
    rc, objs = run(["01020304"])
    assert rc == 1
    assert objs[0]["error"].startswith("unknown payload layout: 4 bytes, starts 01 02 03")
    assert objs[0]["raw"] == "01020304"


def test_one_bad_input_among_good_ones_exits_1_but_decodes_the_rest():
    good = frame(0x72, zcl_payload(1, 5, 6, 1, 1000, 7)).hex()
    rc, objs = run([good, "18070100", good])
    assert rc == 1
    assert [o["error"] is None for o in objs] == [True, False, True]


def test_broken_frames_are_explained():
    whole = bytes.fromhex(EXAMPLE_FRAME.replace(" ", ""))
    rc, objs = run([whole[:20].hex()])
    assert rc == 1 and "cut short" in objs[0]["error"] and "44 payload bytes" in objs[0]["error"]
    rc, objs = run([(whole[:-1] + b"\x0a").hex()])
    assert rc == 1 and "does not end with 0D" in objs[0]["error"]
    rc, objs = run(["2401722C18"])
    assert rc == 1


def test_frame_missing_only_its_final_0d_is_still_read():
    whole = EXAMPLE_FRAME.replace(" ", "")[:-2]
    rc, objs = run([whole])
    assert rc == 0 and objs[0]["export_wh"] == 12345


def test_other_frames_mac_version_install_code_error():
    mac = frame(0x6D, bytes.fromhex("1122334455667788")).hex()
    ver = "2401660108" + "0d"
    code = frame(0x69, install_code_payload(bytes.fromhex("0123456789ABCDEF"))).hex()
    err = frame(0x65, b"\x05").hex()
    rc, objs = run([mac, ver, code, err])
    assert rc == 0
    assert objs[0]["mac"] == "88:77:66:55:44:33:22:11"
    assert objs[1]["version"] == 8
    assert "0123456789ABCDEF" not in json.dumps(objs[2])  # a secret unless asked for
    assert objs[3]["mgm_error_code"] == 5
    rc, objs = run(["--show-secret", code])
    assert objs[0]["install_code"] == "0123456789ABCDEF"


def test_stdin_lines_with_log_text_around_them():
    stdin = ("[12:00:01][D][uart:12]: got 24 01 66 01 07 0D\n"
             "some text without data\n"
             "\n"
             + EXAMPLE_FRAME + "\n")
    rc, objs = run([], stdin)
    assert rc == 0
    assert [o["format"] for o in objs] == ["version", "zcl"]


def test_esphome_full_packet_lines_with_zero_groups_left_out():
    # What the ESPHome component prints after "Full packet:" (all-zero 4-byte groups omitted).
    p = v2_payload(1000000, 500, meter_ms=0x01020304)
    lines = ["[E][emporia_vue_utility:123]: Full packet:"]
    for off in range(0, 152, 4):
        g = p[off:off + 4]
        if any(g):
            lines.append("[E][emporia_vue_utility:123]:   Meter Response Bytes %3d to %3d: %s"
                         % (off, off + 3, " ".join("%02x" % b for b in g)))
    lines += ["[I][emporia_vue_utility:123]: MGM Firmware Version: 2", "[E][x:1]: EOF"]
    rc, objs = run([], "\n".join(lines) + "\n")
    assert rc == 0, objs
    assert len(objs) == 1
    assert (objs[0]["format"], objs[0]["net_wh"], objs[0]["watts"]) == ("v2", 1000000, 500)


def test_capture_log_with_entries_run_together_and_a_split_frame():
    f1 = frame(0x72, zcl_payload(1, 100, 0, 1, 1000, 42)).hex().upper()
    f2 = frame(0x66, b"\x08").hex().upper()
    line = ('"2023-12-08 08:55:46",%s"2023-12-08 08:55:46",%s"2023-12-08 08:55:47",%s'
            % (f1[:30], f1[30:], f2))
    rc, objs = run([], line + "\n")
    assert rc == 0
    assert [o["format"] for o in objs] == ["zcl", "version"]
    assert objs[0]["watts"] == 42


def test_usage_errors_exit_2():
    assert decode.main(["--bogus"], stdin=io.StringIO(""), stdout=io.StringIO()) == 2
    assert decode.main([], stdin=Tty(""), stdout=io.StringIO()) == 2
    assert decode.main([], stdin=io.StringIO("\n\n"), stdout=io.StringIO()) == 2


def test_odd_digit_count_is_reported():
    rc, objs = run(["2401660"])
    assert rc == 1 and "odd number of hex digits" in objs[0]["error"]


def test_as_a_real_command():
    r = subprocess.run([sys.executable, TOOL, EXAMPLE_FRAME], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["import_wh"] == 1000000
    r = subprocess.run([sys.executable, TOOL], input="18 07 0A\n", capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert "Read Attributes Response" in json.loads(r.stdout)["error"]
    r = subprocess.run([sys.executable, TOOL, "--nope"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
