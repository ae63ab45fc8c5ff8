"""`make sim`: the whole thing with no hardware. The firmware runs under the MicroPython unix port,
talks to a simulated MGM111 over a pseudo-terminal and publishes to a local mosquitto (started
if none listens on 127.0.0.1:PORT). Everything published is printed, as Home Assistant sees it.
Type `fault NAME [k=v ...]` (e.g. silence, no_readings, garbage, wh_glitch), `clear`, `status` or
`quit` while it runs."""
import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sim_env  # noqa: E402
from mgm_sim import MgmSim, command  # noqa: E402


def watch_broker(port, stop):
    import paho.mqtt.client as mqtt

    def on_message(client, userdata, msg):
        if "/config" in msg.topic:
            print("  HA  discovery  %s" % msg.topic)
        else:
            text = msg.payload.decode(errors="replace")
            print("  HA  %-34s %s" % (msg.topic, text if len(text) < 160 else text[:160] + "..."))

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="make-sim-watcher")
    c.on_connect = lambda client, u, f, rc, p=None: client.subscribe([("vue_utility/#", 0), ("homeassistant/#", 0)])
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    stop.wait()
    c.loop_stop()


def pump(proc):
    for line in iter(proc.stdout.readline, b""):
        print("  FW  " + line.decode(errors="replace").rstrip())


# Exit statuses of the firmware under the unix port (firmware/loader.py, board/unix.py): the
# device restarts after these two, as the runner does ...
RESTART = {3: "the firmware asked for a restart", -9: "the watchdog reset the firmware"}
# ... and stays in its REPL after these (nothing would change with a restart).
STAYS = {2: "safe mode: the configuration cannot be used",
         4: "the firmware gave up after crashing repeatedly (see crash.log)"}


def supervise(start, stop, t_end=None, say=print):
    """Run the firmware (start() -> Popen with stdout piped), restarting it as the device would,
    until stop is set, t_end passes or it stops for good. -> its last exit status."""
    while True:
        fw = start()
        reader = threading.Thread(target=pump, args=(fw,), daemon=True)
        reader.start()
        try:
            while fw.poll() is None and not stop.is_set():
                if t_end and time.time() > t_end:
                    stop.set()
                time.sleep(0.2)
        finally:
            if fw.poll() is None:
                fw.terminate()
                fw.wait()
            reader.join(2)
        status = fw.returncode
        if stop.is_set():
            return status
        if status in RESTART:
            say("%s: restarting it, as the device would" % RESTART[status])
            continue
        if status in STAYS:
            say("firmware exited with status %s, %s: not restarting it (the device stays in its REPL)"
                % (status, STAYS[status]))
        else:
            say("firmware exited with status %s" % status)
        return status


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mqtt-port", type=int, default=int(os.environ.get("MQTT_PORT", 1883)))
    ap.add_argument("--version", default="8", help="MGM firmware version to simulate: 2, 7, 8 or unknown")
    ap.add_argument("--poll", type=int, default=5, help="poll interval in seconds (5..300)")
    ap.add_argument("--speedup", type=float, default=60.0, help="simulated meter time per real second")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    args = ap.parse_args()

    broker = None
    if not sim_env.port_open(args.mqtt_port):
        print("starting mosquitto on 127.0.0.1:%d" % args.mqtt_port)
        broker = sim_env.Broker(port=args.mqtt_port).start()
    else:
        print("using the MQTT broker already listening on 127.0.0.1:%d" % args.mqtt_port)
    version = int(args.version) if args.version.isdigit() else args.version
    sim = MgmSim(version=version, speedup=args.speedup)
    sim.start()
    print("simulated MGM111 (firmware v%s) on %s" % (args.version, sim.path))
    workdir = os.path.join(sim_env.ROOT, "build", "sim")
    # The firmware believes no meter counts faster than 131 kW: at `speedup` the simulated house
    # (~4 kW peak) would, so the firmware's clock runs faster too (debug.time_scale).
    scale = min(1000, max(1, int(-(-args.speedup // 30))))
    cfg = sim_env.firmware_config(sim.path, args.mqtt_port, meter={"poll_interval_s": args.poll, "startup_delay_s": 0},
                                  debug={"time_scale": scale})
    stop = threading.Event()
    threading.Thread(target=watch_broker, args=(args.mqtt_port, stop), daemon=True).start()
    t_end = time.time() + args.seconds if args.seconds else None

    def commands():
        for line in sys.stdin:
            reply = command(sim, line)
            if reply is None:
                stop.set()
                return
            if reply:
                print(reply)

    if sys.stdin and sys.stdin.isatty():
        threading.Thread(target=commands, daemon=True).start()
    try:
        return supervise(lambda: sim_env.start_firmware(workdir, cfg), stop, t_end) or 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        sim.stop()
        if broker:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
