# The Home Assistant entities that discovery.py announces, as data: one row (a string) per entity:
#   component;key;name;state topic suffix;value template;JSON fragment;flags
# Empty fields: none. A template that is a bare word means that field of the diag JSON (texts cut
# at 255 characters, HA's limit for a state). The fragments are ready JSON text; "@X" at a
# fragment's start is a part shared by several entities (discovery._SHARED). Flags: E (EXP: value
# entity, expire_after follows the poll interval), X (EXPORT: announced only once the meter
# provides export values).
# Apart from the code (discovery.py), so that an announcement step holds one or the other in the
# heap, never both: the step is the device's heap peak. As tuples of fields the table held ~15 KB
# of heap (64-bit port), as rows ~5 KB; one string for all would need one ~3 KB block, which a
# fragmented heap may not have.
_ROWS = (
    'sensor;power;Power;power;;@W;E',
    # Import/export power are HA-side views of the one signed value: nothing extra on the device.
    'sensor;power_import;Power import;power;{{ [value | int(0), 0] | max }};@W;E',
    'sensor;power_export;Power export;power;{{ [0 - (value | int(0)), 0] | max }};@W;E',
    'sensor;energy_in;Energy consumed;energy/in;;@H;E',
    'sensor;energy_out;Energy returned;energy/out;;@H;EX',
    'sensor;energy_net;Energy net;energy/net;;"dev_cla":"energy","unit_of_meas":"Wh","stat_cla":"total";EX',
    'sensor;link;Meter link;diag;link;@D,"dev_cla":"enum","ic":"mdi:zigbee","ops":["starting","ok","no_readings","no_answer","unknown_layout","no_values"];',
    'sensor;link_text;Meter link details;diag;link_text[:255];@D,"ic":"mdi:information-outline";',
    # "None" is HA's word for "no value": nothing is shown rather than a made-up "none".
    'sensor;last_error;Last error;diag;{{ value_json.last_error[:255] or None }};@D,"ic":"mdi:alert-circle-outline";',
    # The device may have no wall clock: it sends the error's age and HA dates it (to the minute, so
    # the state does not move with each diagnostics message).
    'sensor;last_error_time;Last error time;diag;{{ (now() - timedelta(seconds=value_json.last_error_age_s)).replace(second=0, microsecond=0).isoformat() if value_json.last_error_age_s is number else None }};@D,"dev_cla":"timestamp";',
    'sensor;rejected;Readings rejected;diag;rejected;@C,"ic":"mdi:filter-remove-outline";',
    'sensor;joins;Re-joins;diag;joins;@C,"ic":"mdi:link-variant";',
    'sensor;mgm_errors;MGM errors;diag;mgm_errors;@C,"ic":"mdi:alert";',
    'sensor;readings;Readings;diag;readings;@C,"ic":"mdi:counter";',
    'sensor;errors;Errors;diag;errors;@C,"ic":"mdi:alert";',
    'sensor;mgm_version;MGM firmware version;diag;mgm_version;@D,"ic":"mdi:chip";',
    'sensor;mgm_mac;MGM MAC;diag;mgm_mac;@D,"ic":"mdi:identifier";',
    'sensor;rssi;Wi-Fi signal;diag;rssi;@D,"dev_cla":"signal_strength","unit_of_meas":"dBm","stat_cla":"measurement";',
    'sensor;ip;IP address;diag;ip;@D,"ic":"mdi:ip-network";',
    'sensor;ssid;Wi-Fi network;diag;ssid;@D,"ic":"mdi:wifi";',
    'sensor;uptime;Uptime;diag;uptime_s;@D,"dev_cla":"duration","unit_of_meas":"s","stat_cla":"total_increasing";',
    'sensor;free_mem;Free memory;diag;free_mem;@D,"dev_cla":"data_size","unit_of_meas":"B","stat_cla":"measurement";',
    'button;rejoin;Re-join meter;;;"ent_cat":"config","ic":"mdi:link-variant","cmd_t":"~/cmd/rejoin","pl_prs":"PRESS";',
    'button;restart;Restart;;;"ent_cat":"config","dev_cla":"restart","cmd_t":"~/cmd/restart","pl_prs":"PRESS";',
    'number;poll_interval;Poll interval;diag;poll_interval_s;"ent_cat":"config","cmd_t":"~/cmd/poll_interval","unit_of_meas":"s","min":5,"max":300,"step":1,"mode":"box";',
    'switch;raw_frames;Publish raw frames;diag;raw_frames;"ent_cat":"config","ic":"mdi:bug","cmd_t":"~/cmd/raw_frames","pl_on":"ON","pl_off":"OFF";',
    # MGM v4/v6 owners: readings from the module's own log lines (README, unknown versions).
    'switch;mgm_log;MGM log;diag;mgm_log;"ent_cat":"config","ic":"mdi:text-box-search-outline","cmd_t":"~/cmd/mgm_log","pl_on":"ON","pl_off":"OFF";',
    'sensor;source;Reading source;diag;source;@D,"dev_cla":"enum","ic":"mdi:source-branch","ops":["r","log","r+log (cross-checked)","none"];',
    'sensor;mgm_log_text;MGM log details;diag;mgm_log_text[:255];@D,"ic":"mdi:text-box-outline";',
    # Updates over the air (ota.py): the state is HA's update JSON; Install sends "install".
    'update;firmware;Firmware;ota/state;;"ent_cat":"config","dev_cla":"firmware","cmd_t":"~/cmd/update","pl_inst":"install";',
)


def pick(has_export, only, k):
    """The row of the k-th entity to announce, or None after the last. has_export: the meter
    provides export values; only: 0 (all), "EXP" or "EXPORT" (just the entities with that flag)."""
    for row in _ROWS:
        x = row.endswith("X")  # the flags are the row's end: "", "E" or "EX"
        e = row.endswith("E") or row.endswith("EX")
        if (has_export or not x) and (not only or (x if only == "EXPORT" else e)):
            if k == 0:
                return row
            k -= 1
    return None
