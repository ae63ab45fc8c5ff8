#!/usr/bin/env python3
"""Record raw MGM reading payloads into a capture file (README, "Reverse engineering") for
tools/find_fields.py, with the module's received-message log lines when it prints them (MGM log
mode, `loglevel 20`).

    capture.py --mqtt HOST[:PORT] [--topic T] [--user U --password P]   the firmware's debug topic
    capture.py --serial PORT [--baud 115200]                             sniff the MGM's TX line
    capture.py --log FILE                                                convert a terminal log

Writes JSON lines to -o FILE (appending) or stdout. --count N (readings) / --duration S stop a
recording; Ctrl-C stops it cleanly. The firmware publishes raw payloads only when debug.raw_frames
is on (undecodable ones always), and received-message lines only in MGM log mode. Lines of the Key
Establishment cluster (key material) are never recorded.
Exit status: 0 ok, 1 connection failure, 2 usage or unreadable input.
"""
import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import capture_format as cf  # noqa: E402

DEFAULT_TOPIC = "vue_utility/+/debug/+"  # raw: r payloads, rx: the MGM's received-message lines


class Sink:
    """Writes records, counts them and says when --count is reached."""

    def __init__(self, path, count):
        self.stream = sys.stdout if path in (None, "-") else open(path, "a")
        self.count = count
        self.n = 0
        self.rx = 0  # received-message records (not counted by --count)
        self.done = threading.Event()
        self.lock = threading.Lock()

    def write(self, rec):
        with self.lock:
            if self.done.is_set():
                return
            cf.dump(rec, self.stream)
            if rec.get("cmd", "r") != "r":
                self.rx += 1
                return
            self.n += 1
            if self.count and self.n >= self.count:
                self.done.set()

    def close(self):
        if self.stream is not sys.stdout:
            self.stream.close()


def say(msg):
    sys.stderr.write("capture: %s\n" % msg)
    sys.stderr.flush()


def mqtt_record(msg_payload, topic, now):
    """The firmware's debug/raw JSON -> a capture record, or None (with the reason) if unusable."""
    try:
        d = json.loads(msg_payload)
        hexs = str(d["hex"])
        bytes.fromhex(hexs)
    except (ValueError, KeyError, TypeError):
        return None, "not the firmware's raw-frame JSON"
    cmd = d.get("cmd", "r")
    cluster = None
    if cmd == cf.RX:
        try:
            cluster = int(str(d["cluster"]), 16)
        except (KeyError, ValueError):
            return None, 'a received-message record without its "cluster"'
        if cluster == cf.mgm_log.KEY_ESTABLISHMENT:
            return None, "key material (Key Establishment cluster) is not recorded"
    elif cmd != "r":
        return None, "not a reading"
    t = d.get("time")
    if t:
        try:
            cf.parse_time(t)
        except ValueError:
            t = None
    extra = {"uptime_ms": d.get("uptime_ms"), "topic": topic}
    if not t:  # the device's clock is not set: the host's receive time is the best we have
        t = cf.format_time(now)
        extra["t_src"] = "host"
    if cluster is not None:
        return cf.rx_record(t, cluster, bytes.fromhex(hexs), d.get("mgm_version"), "mqtt", **extra), None
    return cf.record(t, bytes.fromhex(hexs), d.get("mgm_version"), "mqtt", **extra), None


def run_mqtt(args, sink):
    import paho.mqtt.client as mqtt
    host, _, port = args.mqtt.partition(":")
    port = int(port or 1883)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="vue-capture-%d" % os.getpid())
    if args.user:
        client.username_pw_set(args.user, args.password or os.environ.get("MQTT_PASSWORD"))
    failed = []

    def on_connect(c, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            failed.append(str(reason_code))
            sink.done.set()
            return
        c.subscribe(args.topic)

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        say("subscribed to %s on %s:%d" % (args.topic, host, port))

    def on_message(c, userdata, msg):
        rec, why = mqtt_record(msg.payload, msg.topic, cf.utc_now())
        if rec is None:
            say("ignored a message on %s: %s" % (msg.topic, why))
        else:
            sink.write(rec)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as e:
        say("cannot connect to %s:%d: %s" % (host, port, e))
        return 1
    client.loop_start()
    try:
        wait(sink, args.duration)
    finally:
        client.disconnect()
        client.loop_stop()
    if failed:
        say("broker refused the connection: %s" % failed[0])
        return 1
    return 0


def wait(sink, duration):
    end = time.time() + duration if duration else None
    try:
        while not sink.done.is_set():
            if end is not None and time.time() >= end:
                break
            sink.done.wait(0.2)
    except KeyboardInterrupt:
        pass


def run_serial(args, sink):
    import serial
    from decoders import DecodeError, mgm_log
    from mgm_uart import CMD_READING, CMD_VERSION, FrameParser
    try:
        port = serial.Serial(args.serial, args.baud, timeout=0.2)
    except (serial.SerialException, OSError) as e:
        say("cannot open %s: %s" % (args.serial, e))
        return 1
    state = {"version": args.mgm_version}

    def on_frame(cmd, payload):
        if cmd == CMD_VERSION and len(payload) == 1:
            state["version"] = payload[0]
        elif cmd == CMD_READING:  # only readings: the install code ('i') is a secret
            sink.write(cf.record(cf.utc_now(), payload, state["version"], "serial"))

    rx = mgm_log.RxLine(255)

    def on_log(buf, start, end):
        # The module's received-message lines (MGM log mode); its other text is not recorded.
        try:
            n = mgm_log.parse(buf, start, end, rx)
        except DecodeError:
            return  # cut short or garbled: no half lines in a capture
        if n >= 0 and rx.cluster != mgm_log.KEY_ESTABLISHMENT:
            sink.write(cf.rx_record(cf.utc_now(), rx.cluster, rx.zcl[:n], state["version"], "serial"))

    parser = FrameParser(on_frame, on_log)
    say("listening on %s at %d baud" % (args.serial, args.baud))
    end = time.time() + args.duration if args.duration else None
    try:
        while not sink.done.is_set() and (end is None or time.time() < end):
            # What is there now, not 512 bytes: each answer and log line gets its own time (find_fields
            # pairs frames with log lines by time).
            data = port.read(min(4096, max(1, port.in_waiting)))
            if data:
                parser.feed(data)
            else:
                parser.idle()  # a quiet line: a partial frame will not be completed
    except KeyboardInterrupt:
        pass
    except (serial.SerialException, OSError) as e:
        say("serial port error: %s" % e)
        return 1
    finally:
        port.close()
    return 0


def run_log(args, sink):
    try:
        with open(args.log, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        say("cannot read %s: %s" % (args.log, e.strerror or e))
        return 2
    frames, rx = cf.parse_log_all(text, args.mgm_version)
    if not frames and not rx:
        say("%s holds no timestamped reading frame (24 01 72 <len> ... 0D)\n  expected: %s"
            % (args.log, cf.LOG_SAMPLE))
        return 2
    recs = [(t, 0, cf.record(t, payload, version, "log")) for t, payload, version in frames]
    recs += [(t, 1, cf.rx_record(t, cluster, zcl, version if version is not None else args.mgm_version,
                                 "log")) for t, cluster, zcl, version in rx]
    recs.sort(key=lambda r: (r[0], r[1]))
    for _, _, rec in recs:
        sink.write(rec)
    say("%d reading frames and %d received-message lines from %s" % (len(frames), len(rx), args.log))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--mqtt", metavar="HOST[:PORT]", help="record the firmware's debug topics (raw, rx)")
    src.add_argument("--serial", metavar="PORT", help="sniff a serial line (the MGM's TX)")
    src.add_argument("--log", metavar="FILE", help="convert a terminal program's timestamped log")
    ap.add_argument("--topic", default=DEFAULT_TOPIC, help="default: %(default)s")
    ap.add_argument("--user")
    ap.add_argument("--password", help="or set MQTT_PASSWORD")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--mgm-version", type=int, help="record this MGM version when the source "
                                                    "does not say")
    ap.add_argument("-o", "--output", help="capture file to append to (default: stdout)")
    ap.add_argument("--count", type=int, help="stop after N readings")
    ap.add_argument("--duration", type=float, help="stop after S seconds")
    args = ap.parse_args(argv)
    sink = Sink(args.output, args.count)
    try:
        if args.mqtt:
            return run_mqtt(args, sink)
        if args.serial:
            return run_serial(args, sink)
        return run_log(args, sink)
    finally:
        sink.close()


if __name__ == "__main__":
    sys.exit(main())
