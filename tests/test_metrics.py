"""Tests for producer.metrics: the named series, their labels and the text exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from producer.errors import AuthFailed
from producer.metrics import CONTENT_TYPE, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_counters_exposed_after_increment():
    """Each counter appears under its documented name and labels with the summed value."""
    m = Metrics()
    m.records_fetched("d1", "users", 40)
    m.records_fetched("d1", "users", 2)
    m.events("d1", "users", "CREATED", 5)
    m.deadletters("d1", "users")
    m.retry("d1", "429")
    m.mass_delete_held("d1", "enrollments")
    s = samples(m)
    assert s[("oneroster_records_fetched_total", (("district", "d1"), ("entity", "users")))] == 42
    key = ("oneroster_events_total", (("district", "d1"), ("entity", "users"), ("op", "CREATED")))
    assert s[key] == 5
    assert s[("oneroster_deadletters_total", (("district", "d1"), ("entity", "users")))] == 1
    assert s[("oneroster_retries_total", (("district", "d1"), ("reason", "429")))] == 1
    held = ("oneroster_mass_delete_held_total", (("district", "d1"), ("entity", "enrollments")))
    assert s[held] == 1


def test_errors_labelled_by_class_never_message():
    """An exception is counted under its class name; its message (maybe a secret) is not shown."""
    m = Metrics()
    m.error("d1", AuthFailed("client secret hunter2 refused"))
    m.error("d1", AuthFailed)
    m.error("d1", "timeout")
    s = samples(m)
    assert s[("oneroster_errors_total", (("district", "d1"), ("kind", "AuthFailed")))] == 2
    assert s[("oneroster_errors_total", (("district", "d1"), ("kind", "timeout")))] == 1
    assert b"hunter2" not in m.render()


def test_histograms_and_gauges():
    """Histograms count observations; gauges hold the last value set."""
    m = Metrics()
    m.page("d1", 0.2)
    m.page("d1", 3.0)
    m.sync("d1", "users", "FULL", 12.0)
    m.last_success("d1", "users", 1_700_000_000.0)
    m.cursor_lag("d1", "users", 65.0)
    m.state_keys(1234)
    m.ready(True)
    s = samples(m)
    assert s[("oneroster_page_seconds_count", (("district", "d1"),))] == 2
    assert s[("oneroster_page_seconds_sum", (("district", "d1"),))] == 3.2
    sync = (("district", "d1"), ("entity", "users"), ("mode", "FULL"))
    assert s[("oneroster_sync_seconds_count", sync)] == 1
    du = (("district", "d1"), ("entity", "users"))
    assert s[("oneroster_last_success_timestamp_seconds", du)] == 1_700_000_000.0
    assert s[("oneroster_cursor_lag_seconds", du)] == 65.0
    assert s[("oneroster_state_keys", ())] == 1234
    assert s[("oneroster_ready", ())] == 1
    m.ready(False)
    assert samples(m)[("oneroster_ready", ())] == 0


def test_registries_are_independent():
    """Two Metrics objects do not share series (no global registry)."""
    a, b = Metrics(), Metrics()
    a.events("d1", "orgs", "DELETED")
    assert b"oneroster_events_total{" in a.render()
    assert b"oneroster_events_total{" not in b.render()


def test_forget_district_drops_its_series():
    """forget_district removes a removed district's series and keeps the others."""
    m = Metrics()
    m.events("gone", "users", "CREATED")
    m.page("gone", 1.0)
    m.events("kept", "users", "CREATED")
    m.forget_district("gone")
    text = m.render().decode()
    assert 'district="gone"' not in text
    assert 'district="kept"' in text


def test_content_type_is_prometheus_text():
    """render() is served with the Prometheus text content type."""
    assert CONTENT_TYPE.startswith("text/plain")
    assert b"# TYPE oneroster_ready gauge" in Metrics().render()
