"""``Store.resolve_id`` on every backend: a whole id or a unique prefix of at least 8
characters names one run, code version or event; anything else is a classified refusal."""

import pytest

from supervisor.store.base import MAX_CANDIDATES, IdNotResolved, Store
from tests.helpers import event, run_record
from tests.supervisor.store.test_code_history import change

# time-ordered ids share their first digits: these share 10 of them
RUNS = ["0190ab12cd0000aa", "0190ab12cd1111bb", "0190ab12ff2222cc"]


def refused(store: Store, kind: str, text: str, code: str) -> IdNotResolved:
    with pytest.raises(IdNotResolved) as caught:
        store.resolve_id(kind, text)
    assert caught.value.code == code and caught.value.kind == kind
    return caught.value


def test_a_unique_prefix_or_a_whole_run_id_names_one_run(store: Store) -> None:
    store.write_batch([run_record(r) for r in RUNS] + [run_record(RUNS[0], 2)])
    assert store.resolve_id("run", "0190ab12ff") == RUNS[2]
    assert store.resolve_id("run", "0190ab12cd0") == RUNS[0]  # two attempts: still one run
    assert store.resolve_id("run", RUNS[1]) == RUNS[1]
    ambiguous = refused(store, "run", "0190ab12cd", "ambiguous_id")
    assert ambiguous.candidates == tuple(RUNS[:2])
    assert all(r in ambiguous.message for r in RUNS[:2])
    assert "too short" in refused(store, "run", "0190ab1", "bad_id").message
    assert "no run id starts with" in refused(store, "run", "0190ab13", "unknown_id").message
    refused(store, "run", "0190ab12%", "bad_id")  # no LIKE wildcard ever reaches the SQL
    refused(store, "run", "", "bad_id")


def test_a_short_id_given_whole_is_taken(store: Store) -> None:
    store.write_batch([run_record("r1"), run_record("r10")])
    assert store.resolve_id("run", "r1") == "r1"  # whole ids need no 8 characters
    refused(store, "run", "r", "bad_id")


def test_history_and_event_ids_resolve_in_their_own_tables(store: Store) -> None:
    recorded = store.record_code_version(change("print(1)", history_id="feedface00000001"))
    assert recorded.version is not None
    store.write_batch([event("beadfeed00000001"), event("beadfeed00000002")])
    assert store.resolve_id("history", "feedface") == "feedface00000001"
    refused(store, "run", "feedface", "unknown_id")  # a history id is not a run id
    assert store.resolve_id("event", "beadfeed00000002") == "beadfeed00000002"
    refused(store, "event", "beadfeed", "ambiguous_id")
    with pytest.raises(ValueError):
        store.resolve_id("actor", "whatever1")


def test_an_ambiguous_prefix_names_at_most_ten_candidates(store: Store) -> None:
    store.write_batch([run_record(f"abcdef12{n:04d}") for n in range(MAX_CANDIDATES + 3)])
    found = refused(store, "run", "abcdef12", "ambiguous_id")
    assert len(found.candidates) == MAX_CANDIDATES and found.message.endswith(
        "and more; give more characters"
    )
