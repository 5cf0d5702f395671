"""Code history: the store contract for code versions, on SQLite and on PostgreSQL alike (the
``store`` fixture), including racing writers and the schema's own guarantees."""

import dataclasses
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from supervisor.code.records import CodeChange, SyncUpdate
from supervisor.events import new_id
from supervisor.spool import decode_batch, encode_batch
from supervisor.store.base import Store, VersionExists
from supervisor.store.postgres import PostgresStore
from supervisor.store.sqlite import SqliteStore
from tests.supervisor.store.test_store_contract import actor

T0 = 1_764_429_324.123456


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def change(text: str, change_type: str = "manual_deploy", **fields: Any) -> CodeChange:
    values: dict[str, Any] = {
        "history_id": new_id(),
        "actor": "backup",
        "script_code": text,
        "script_code_hash": sha(text),
        "change_type": change_type,
        "changed_at": T0,
        "source_file_path": "/srv/actors/backup.py",
        "source_file_mtime": T0 - 60,
    }
    values.update(fields)
    return CodeChange(**values)


def test_versions_auto_increment_from_1_0_0_and_explicit_tags_are_kept(store: Store) -> None:
    first = store.record_code_version(change("v1", "initial", synced_file=True))
    second = store.record_code_version(change("v2"))
    explicit = store.record_code_version(change("v3", version_tag="2.0.0", changed_by="ada"))
    after = store.record_code_version(change("v4", change_reason="fix"))
    tags = [r.version.version_tag if r.version else None for r in (first, second, explicit, after)]
    assert tags == ["1.0.0", "1.0.1", "2.0.0", "2.0.1"]
    assert second.previous == first.version
    with pytest.raises(VersionExists, match=r"version 2\.0\.0 already exists"):
        store.record_code_version(change("v5", version_tag="2.0.0"))

    history = store.code_history("backup")
    assert [v.version_tag for v in history] == ["2.0.1", "2.0.0", "1.0.1", "1.0.0"]
    assert [v.is_active for v in history] == [True, False, False, False]
    assert history[0] == after.version
    assert history[1].changed_by == "ada" and history[0].change_reason == "fix"
    assert history[1].deactivated_at == history[0].activated_at  # replaced by it, at once
    assert store.code_history("backup", limit=1) == history[:1]
    assert store.code_history("nobody") == []


def test_code_version_by_tag_history_id_or_active(store: Store) -> None:
    old = store.record_code_version(change("v1")).version
    new = store.record_code_version(change("v2")).version
    assert old is not None and new is not None
    assert store.code_version("backup") == new
    old = dataclasses.replace(old, deactivated_at=new.activated_at)  # replaced by the new one
    assert store.code_version("backup", version_tag="1.0.0") == old
    assert store.code_version("backup", history_id=old.history_id) == old
    assert store.code_version("other", history_id=old.history_id) is None  # not its version
    assert store.code_version("backup", version_tag="9.9.9") is None


def test_an_unchanged_deploy_records_nothing_but_syncs_the_file(store: Store) -> None:
    store.record_code_version(change("v1", "initial", synced_file=True))
    store.update_sync_status(
        SyncUpdate(actor="backup", status="drift_detected", synced_at=T0, file_path="/x.py")
    )
    again = store.record_code_version(
        change("v1", only_if_changed=True, synced_file=True, source_file_mtime=T0)
    )
    assert again.version is None and again.active is not None
    assert again.active.version_tag == "1.0.0"
    assert len(store.code_history("backup")) == 1
    state = store.load_code_states()["backup"]
    assert (state.script_sync_status, state.script_file_mtime) == ("synced", T0)


def test_the_actor_row_carries_the_active_code_and_the_file_state(store: Store) -> None:
    store.write_batch([actor("backup")])  # the supervisor's own upsert keeps the code columns
    recorded = store.record_code_version(change("v1", "initial", synced_file=True))
    store.write_batch([actor("backup", updated_at=T0 + 1, exec_mode="database")])
    assert recorded.version is not None
    state = store.load_code_states(["backup"])["backup"]
    assert (state.script_code, state.script_code_hash) == ("v1", sha("v1"))
    assert (state.active_history_id, state.active_version) == (recorded.version.history_id, "1.0.0")
    assert (state.script_file_hash, state.script_sync_status) == (sha("v1"), "synced")
    assert state.script_file_path == "/srv/actors/backup.py" and state.exec_mode == "database"
    assert store.load_actors()["backup"].exec_mode == "database"

    # a rollback does not touch the file columns: the file still holds v1, the code is v0
    store.record_code_version(change("v0", "rollback"))
    state = store.load_code_states()["backup"]
    assert (state.script_code, state.script_file_hash) == ("v0", sha("v1"))
    assert state.script_sync_status == "drift_detected"
    store.update_sync_status(
        SyncUpdate(actor="backup", status="file_missing", synced_at=T0 + 5, file_path="/x.py")
    )
    state = store.load_code_states()["backup"]
    assert (state.script_sync_status, state.script_synced_at) == ("file_missing", T0 + 5)
    assert state.script_file_hash == sha("v1")  # kept: None means "unchanged"
    assert store.load_code_states(["nobody"]) == {}


def test_every_change_is_an_actor_event_with_version_hash_who_and_why(store: Store) -> None:
    store.record_code_version(change("v1", "initial", changed_by="supervisor"))
    store.record_code_version(change("v2", "auto_sync"))
    store.record_code_version(change("v1", "rollback", changed_by="ada", change_reason="bad"))
    found = store.list_events(aggregate_type="actor", aggregate_id="backup")
    assert [e.event_type for e in found] == [
        "code_deployed",
        "code_auto_synced",
        "code_rolled_back",
    ]
    meta = found[-1].metadata
    assert (meta["version"], meta["previous_version"], meta["change_type"]) == (
        "1.0.2", "1.0.1", "rollback"
    )  # fmt: skip
    assert (meta["code_sha256"], meta["changed_by"], meta["change_reason"]) == (
        sha("v1"),
        "ada",
        "bad",
    )
    assert meta["history_id"] == store.code_version("backup").history_id  # type: ignore[union-attr]


def test_a_replayed_batch_records_each_change_once(store: Store) -> None:
    batch = [change("v1", "initial"), change("v2", "auto_sync")]
    store.write_batch(batch)
    store.write_batch(batch)  # the spool replays a batch after a crash
    store.write_batch(decode_batch(encode_batch(batch)))  # as it comes back from the spool
    assert [v.version_tag for v in store.code_history("backup")] == ["1.0.1", "1.0.0"]
    assert len(store.list_events(aggregate_type="actor")) == 2


def test_spooled_code_records_round_trip() -> None:
    records = [
        change("grüß\n", version_tag="1.2.3", git_commit_hash="ab" * 20, only_if_changed=True),
        SyncUpdate(actor="a", status="synced", synced_at=T0, file_path="/a.py", file_hash="cd"),
    ]
    assert decode_batch(encode_batch(records)) == records


@contextmanager
def _opened(store: Store) -> Iterator[Callable[[], Store]]:
    """A factory of more stores on the same database (each with its own connection)."""
    opened: list[Store] = []

    def another() -> Store:
        if isinstance(store, SqliteStore):
            other: Store = SqliteStore(store.path, busy_timeout_s=30)
        else:
            assert isinstance(store, PostgresStore)
            other = PostgresStore(store._url)
        opened.append(other)
        return other

    try:
        yield another
    finally:
        for other in opened:
            other.close()


@pytest.mark.timeout(60)
def test_racing_deploys_leave_one_active_version_and_distinct_tags(store: Store) -> None:
    store.record_code_version(change("v0", "initial"))
    writers, rounds = 6, 5
    with _opened(store) as another:
        stores = [another() for _ in range(writers)]
        barrier = threading.Barrier(writers)
        errors: list[BaseException] = []

        def deploy(index: int) -> None:
            try:
                barrier.wait()
                for n in range(rounds):
                    stores[index].record_code_version(change(f"w{index}-{n}"))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=deploy, args=(i,)) for i in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    history = store.code_history("backup")
    assert len(history) == 1 + writers * rounds
    assert sum(v.is_active for v in history) == 1
    assert len({v.version_tag for v in history}) == len(history)
    assert {v.version_tag for v in history} == {f"1.0.{n}" for n in range(len(history))}
    state = store.load_code_states()["backup"]
    assert state.active_history_id == history[0].history_id  # the actor row agrees


@contextmanager
def _raw(store: Store) -> Iterator[Callable[[str], object]]:
    """Plain SQL on the store's database, past the store (as an operator's client would)."""
    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(store.path, isolation_level=None)
        try:
            yield lambda sql: conn.execute(sql)
        finally:
            conn.close()
        return
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store._url, autocommit=True) as pg_conn:
        yield lambda sql: pg_conn.execute(sql)


def test_the_schema_keeps_history_append_only_with_one_active_row(store: Store) -> None:
    store.record_code_version(change("v1", "initial"))
    store.record_code_version(change("v2"))
    refused = (sqlite3.DatabaseError, psycopg.Error)
    with _raw(store) as sql:
        with pytest.raises(refused, match="append-only"):
            sql("DELETE FROM actor_code_history")
        with pytest.raises(refused, match="append-only"):
            sql("UPDATE actor_code_history SET script_code = 'evil'")
        with pytest.raises(refused, match="append-only"):
            sql("UPDATE actor_code_history SET deactivated_at = NULL")
        with pytest.raises(refused, match=r"actor_code_history_active|UNIQUE"):
            sql(
                "INSERT INTO actor_code_history (history_id, actor_id, script_code, "
                "script_code_hash, change_type, changed_at, version_tag, activated_at) VALUES "
                "('x', 'backup', 'v3', 'h', 'manual_deploy', '2026-01-01T00:00:00Z', '9.0.0', "
                "'2026-01-01T00:00:00Z')"
            )
    assert [v.script_code for v in store.code_history("backup")] == ["v2", "v1"]


def test_timestamps_keep_microseconds(store: Store) -> None:
    now = time.time()
    recorded = store.record_code_version(change("v1", changed_at=T0, source_file_mtime=now))
    (stored,) = store.code_history("backup")
    assert (stored.changed_at, stored.source_file_mtime) == (T0, pytest.approx(now, abs=1e-6))
    assert stored == recorded.version


BUNDLE = {"phrases.py": "HI = 'hello'\n", "lib/__init__.py": ""}


def test_a_bundle_round_trips_and_its_files_are_append_only_too(store: Store) -> None:
    recorded = store.record_code_version(change("import phrases\n", bundle_files=BUNDLE))
    assert recorded.version is not None and recorded.version.bundle_files == BUNDLE
    (stored,) = store.code_history("backup")
    assert stored == recorded.version
    assert stored.files("main.py") == {
        "main.py": "import phrases\n",
        **dict(sorted(BUNDLE.items())),
    }
    assert store.load_code_states(["backup"])["backup"].bundle_files == BUNDLE
    refused = (sqlite3.DatabaseError, psycopg.Error)
    with _raw(store) as sql, pytest.raises(refused, match="append-only"):
        sql('UPDATE actor_code_history SET bundle_files = \'{"phrases.py": "evil"}\'')
    assert store.code_history("backup")[0].bundle_files == BUNDLE
    # the same entry with another helper is another version; the entry alone has no bundle
    assert store.record_code_version(change("import phrases\n", script_code_hash="b2")).version
    assert store.code_history("backup")[0].bundle_files is None
