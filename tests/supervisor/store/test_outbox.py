"""The alert outbox on both stores: the writer's insert, the sender's save, in either order."""

from dataclasses import replace

from supervisor.alerts.records import DELIVERED, AlertRecord
from supervisor.events import new_id
from supervisor.records import Event
from supervisor.store.base import Store

NOW = 1_800_000_000.123456


def _alert(**changes: object) -> AlertRecord:
    base = AlertRecord(
        alert_id=new_id(), destination="ops", event="run_failed", actor="a", run_id="r1",
        payload={"event": "run_failed", "error": "boom\x00"}, due_at=NOW, created_at=NOW,
        updated_at=NOW,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_an_alert_lands_with_its_event_and_reads_back_the_same(store: Store) -> None:
    alert = _alert()
    event = Event(event_id=new_id(), event_type="run_failed", aggregate_type="run",
                  aggregate_id="r1", created_at=NOW)  # fmt: skip
    store.write_batch([event, alert])
    [found] = store.pending_alerts()
    assert found == replace(alert, payload={"event": "run_failed", "error": "boom\ufffd"})
    assert store.list_alerts(status="pending") == [found]
    assert store.list_alerts(destination="elsewhere") == []


def test_a_folded_repeat_counts_up_only_while_pending(store: Store) -> None:
    alert = _alert()
    store.write_batch([alert])
    store.write_batch([replace(alert, count=3, updated_at=NOW + 1)])
    assert [a.count for a in store.pending_alerts()] == [3]
    store.save_alert(replace(alert, count=3, status=DELIVERED, attempts=1, delivered_at=NOW + 2))
    store.write_batch([replace(alert, count=4, updated_at=NOW + 3)])
    [found] = store.list_alerts()
    assert (found.status, found.count, found.delivered_at) == (DELIVERED, 3, NOW + 2)
    assert store.pending_alerts() == []


def test_a_delivery_saved_before_its_spooled_insert_is_not_undone(store: Store) -> None:
    alert = _alert()
    store.save_alert(replace(alert, status=DELIVERED, attempts=1, delivered_at=NOW))
    store.write_batch([alert])  # the writer's insert, replayed from the spool later
    [found] = store.list_alerts()
    assert found.status == DELIVERED
