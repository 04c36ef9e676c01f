"""The inbox's Prometheus families: every declared name is exported, with its samples."""

from __future__ import annotations

from outbox.ops.inbox_metrics import METRIC_NAMES, InboxPrometheusObserver


def test_every_family_is_exported_and_counts() -> None:
    observer = InboxPrometheusObserver()
    observer.applied("orders", "OrderPlaced", 0.003)
    observer.duplicate("orders")
    observer.parked("orders")
    observer.held("orders")
    observer.lag("orders", 1, 7)
    observer.state("database", False)
    body, content_type = observer.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    for name in METRIC_NAMES:
        assert f"# TYPE {name}" in text, name
    assert 'outbox_inbox_events_applied_total{topic="orders",type="OrderPlaced"} 1.0' in text
    assert 'outbox_inbox_lag{partition="1",topic="orders"} 7.0' in text
    assert 'outbox_inbox_up{component="database"} 0.0' in text
    assert "outbox_inbox_handler_duration_seconds_count 1.0" in text
