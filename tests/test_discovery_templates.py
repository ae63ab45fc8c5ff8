"""The value templates of the discovery payloads, rendered with Jinja2 as Home Assistant renders them
(HA's own globals now() and timedelta supplied), for every value the firmware can send."""
import datetime
import json

import jinja2
from hypothesis import given, strategies as st

import discovery

ENV = jinja2.Environment()
NOW = datetime.datetime(2026, 11, 27, 12, 0, 30, 123000, tzinfo=datetime.timezone.utc)


def render(key, value=None, value_json=None):
    e = [x for x in discovery.ENTITIES if x[1] == key][0]
    payload = json.loads(discovery.payload(e, "b", "n", "{}", 60, "{}"))
    tmpl = ENV.from_string(payload["val_tpl"])
    return tmpl.render(value=value, value_json=value_json, now=lambda: NOW, timedelta=datetime.timedelta)


@given(st.integers(-131072, 131072))
def test_import_and_export_power_are_non_negative_and_add_up_to_the_net(w):
    imp = int(render("power_import", str(w)))
    exp = int(render("power_export", str(w)))
    assert imp >= 0 and exp >= 0
    assert imp - exp == w
    assert imp == 0 or exp == 0


def test_no_error_shows_nothing_rather_than_a_word():
    # HA's MQTT sensor reads a rendered "None" as "no value".
    assert render("last_error", value_json={"last_error": ""}) == "None"
    assert render("last_error", value_json={"last_error": "MQTT connection lost"}) == "MQTT connection lost"


@given(st.integers(0, 10 ** 8))
def test_last_error_time_is_a_stable_timestamp(age):
    t = render("last_error_time", value_json={"last_error_age_s": age})
    ts = datetime.datetime.fromisoformat(t)
    assert ts.second == 0 and ts.microsecond == 0
    assert NOW - datetime.timedelta(seconds=age + 60) < ts <= NOW


def test_last_error_time_is_empty_without_an_error():
    assert render("last_error_time", value_json={"last_error_age_s": None}) == "None"


def test_link_template_gives_the_state_itself():
    import meter
    for s in meter.STATES:
        assert render("link", value_json={"link": s}) == s
