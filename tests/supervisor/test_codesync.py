"""The file side of code management, on real files: hashing and the stat cache, version tags,
git, the code cache; and the sync decisions of :mod:`supervisor.code.book` (no store needed:
they take what the store holds and return the records to write)."""

import hashlib
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.actors import build_actors
from supervisor.code import book as codebook
from supervisor.code.book import look, sync_actor
from supervisor.code.bundle import bundle_sha256
from supervisor.code.records import CodeChange, CodeState, SyncUpdate
from supervisor.code.sync import (
    MAX_FILE_BYTES,
    RACY_NS,
    ActorCode,
    CodeError,
    check_version,
    decode_source,
    git_commit,
    git_commits,
    make_cache,
    materialize,
    next_version,
    read_snapshot,
)
from supervisor.config import ActorConfig, load_config
from supervisor.records import Event, Record

OLD = time.time() - 3600  # an mtime/atime well outside the racy window


def _script(folder: Path, body: str = "print('{}')\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.py"
    path.write_text(body)
    os.utime(path, (OLD, OLD))
    return path


def _actor(folder: Path, **keys: str) -> ActorConfig:
    extra = "".join(f'{key} = "{value}"\n' for key, value in keys.items())
    config = folder / "supervisor.toml"
    config.write_text(f'[[actors]]\nname = "job"\nscript = "job.py"\n{extra}')
    return load_config(config, environ={}).actors["job"]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _stored(text: str, *, file_text: str | None = None, status: str = "synced") -> CodeState:
    """What the store holds after ``text`` was synced from a file holding ``file_text``."""
    return CodeState(
        actor="job",
        script_code=text,
        script_code_hash=_sha(text),
        active_history_id="h1",
        active_version="1.0.0",
        script_file_hash=_sha(file_text if file_text is not None else text),
        script_sync_status=status,
    )


def _kinds(records: list[Record]) -> list[str]:
    return [
        r.event_type if isinstance(r, Event) else type(r).__name__ + ":" + _what(r) for r in records
    ]


def _what(record: Any) -> str:
    return record.change_type if isinstance(record, CodeChange) else record.status


# --- reading files -----------------------------------------------------------------------------


def test_snapshot_hashes_the_bytes_and_trusts_only_a_settled_stat_key(tmp_path: Path) -> None:
    path = _script(tmp_path)
    snap = read_snapshot(path)
    assert snap is not None and snap.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # written just now: its ctime is recent, so the key is not cached (git's racily clean case)
    assert snap.key is None
    assert read_snapshot(tmp_path / "gone.py") is None
    assert read_snapshot(tmp_path) is None  # a folder is no script


def test_source_must_be_utf8_without_nul() -> None:
    assert decode_source("grüß\r\n".encode(), "x.py") == "grüß\r\n"
    with pytest.raises(CodeError, match="not UTF-8"):
        decode_source(b"\xff\xfe", "x.py")
    with pytest.raises(CodeError, match="NUL"):
        decode_source(b"a\x00b", "x.py")


def test_version_tags_increment_the_patch_and_skip_taken_ones() -> None:
    assert next_version(None, ()) == "1.0.0"
    assert next_version("1.0.0", ()) == "1.0.1"
    assert next_version("2.4.9", {"2.4.10", "2.4.11"}) == "2.4.12"
    assert check_version("10.0.3") == (10, 0, 3)
    for bad in ("1.0", "v1.0.0", "1.0.0-rc1", "01.0.0", ""):
        with pytest.raises(CodeError, match=r"MAJOR\.MINOR\.PATCH"):
            check_version(bad)


def test_materialized_code_is_content_addressed_atomic_and_private(tmp_path: Path) -> None:
    text = "print('cached')\n"
    path = materialize(tmp_path, _sha(text), "job.py", text)
    assert path == tmp_path / _sha(text) / "job.py" and path.read_text() == text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # scripts must not read others' code
    cache = make_cache()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    cache.rmdir()
    assert materialize(tmp_path, _sha(text), "job.py", text) == path  # written once
    assert [p.name for p in tmp_path.iterdir()] == [_sha(text)]  # no temp folder left behind
    # the same code as another actor's script of another name: beside it, in the same folder
    assert materialize(tmp_path, _sha(text), "other.py", text) == path.with_name("other.py")
    with pytest.raises(CodeError, match="does not match its hash"):
        materialize(tmp_path, _sha("other"), "x.py", text)


def test_a_materialized_bundle_holds_every_file_and_refuses_paths_that_escape(
    tmp_path: Path,
) -> None:
    others = {"phrases.py": "HI = 1\n", "pkg/__init__.py": "", "pkg/util.py": "X = 2\n"}
    files = {"main.py": b"import phrases\n", **{k: v.encode() for k, v in others.items()}}
    sha = bundle_sha256(files, "main.py")
    path = materialize(tmp_path, sha, "main.py", "import phrases\n", others)
    assert sorted(p.relative_to(path.parent).as_posix() for p in path.parent.rglob("*.py")) == [
        "main.py", "phrases.py", "pkg/__init__.py", "pkg/util.py",
    ]  # fmt: skip
    assert (path.parent / "pkg" / "util.py").read_text() == "X = 2\n"
    for bad in ("../evil.py", "/etc/evil.py", "pkg/../../x.py", "data.txt", "a-b.py"):
        with pytest.raises(CodeError, match="invalid module path"):
            materialize(tmp_path / "x", sha, "main.py", "", {bad: ""})


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_git_commit_of_a_file_clean_dirty_untracked_or_outside_a_repo(tmp_path: Path) -> None:
    assert git_commit(_script(tmp_path / "plain")) is None
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    script = _script(repo)
    _git(repo, "add", "job.py")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_commit(script) == head
    script.write_text("print('edited')\n")
    assert git_commit(script) == f"{head}-dirty"
    assert git_commit(_script(repo / "untracked")) == head  # in the repository, never committed


def test_git_commits_answers_as_git_commit_does_file_by_file(tmp_path: Path) -> None:
    """The start-up batch: the same answers as one git_commit per file, in a few processes."""
    repo = tmp_path / "repo"
    (repo / "sub dir").mkdir(parents=True)
    _git(repo, "init", "-q")
    clean, edited, spaced = repo / "clean.py", repo / "edited.py", repo / "sub dir" / "a job.py"
    for path in (clean, edited, spaced):
        path.write_text(f"print({path.name!r})\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    clean.write_text("print('second')\n")
    _git(repo, "commit", "-q", "-am", "second")
    edited.write_text("print('edited')\n")
    untracked = repo / "sub dir" / "new.py"
    untracked.write_text("print('new')\n")
    outside = _script(tmp_path / "plain")
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    unborn = _script(empty)
    paths = [clean, edited, spaced, untracked, outside, unborn, clean]
    expected = {path: git_commit(path) for path in paths}
    assert git_commits(paths) == expected
    assert str(expected[edited]).endswith("-dirty")
    assert expected[clean] != expected[spaced]  # each file's own last commit
    assert expected[outside] is None and expected[unborn] is None


class _Store:
    def load_code_states(self, names: list[str]) -> dict[str, CodeState]:
        return {}


class _Writer:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def put(self, record: Record) -> None:
        self.records.append(record)


def test_startup_reads_a_shared_script_once_and_records_each_actors_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many actors on one script: one read of it, and each new version names its commit, looked
    up in one batch (a git process per actor cost 100,000 actors minutes)."""
    repo = tmp_path / "repo"
    _script(repo)
    (repo / "other.py").write_text("print('other')\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    config = repo / "supervisor.toml"
    config.write_text(
        "".join(f'[[actors]]\nname = "a{n}"\nscript = "job.py"\n' for n in range(5))
        + '[[actors]]\nname = "b"\nscript = "other.py"\n'
    )
    configs = load_config(config, environ={}).actors
    reads: list[Path] = []
    real = codebook.read_snapshot
    monkeypatch.setattr(
        codebook,
        "read_snapshot",
        lambda p, scan=True, runs_as=None: reads.append(p) or real(p, scan=scan),
    )
    actors = build_actors(configs, {})
    writer = _Writer()
    book = codebook.CodeBook(
        store=_Store(), writer=writer, reader=None, cache=make_cache(),  # type: ignore[arg-type]
        actors=lambda: actors, on_ready=lambda: None, clock=lambda: 1.0,
    )  # fmt: skip
    book.startup()
    assert sorted(reads) == [repo / "job.py", repo / "other.py"]
    changes = [r for r in writer.records if isinstance(r, CodeChange)]
    assert sorted(c.actor for c in changes) == ["a0", "a1", "a2", "a3", "a4", "b"]
    head = _git(repo, "rev-parse", "HEAD")
    assert {c.git_commit_hash for c in changes} == {head}
    assert all(actors[c.actor].code.history_id == c.history_id for c in changes)
    assert actors["a0"].code.paths is actors["a4"].code.paths  # one snapshot, shared


# --- the sync decisions ------------------------------------------------------------------------


def test_first_sight_records_the_initial_version(tmp_path: Path) -> None:
    _script(tmp_path)
    code, records = sync_actor(_actor(tmp_path), None, tmp_path, time.time())
    (change,) = records
    assert isinstance(change, CodeChange) and change.change_type == "initial"
    assert change.synced_file and change.version_tag is None  # the store picks 1.0.0
    assert (code.history_id, code.code_sha256) == (change.history_id, _sha("print('{}')\n"))
    assert code.status == "synced" and code.cache_path is None  # file mode: nothing cached


def test_a_file_changed_since_its_last_sync_is_auto_synced_unless_manual(tmp_path: Path) -> None:
    _script(tmp_path, "print('new')\n")
    stored = _stored("print('old')\n")
    code, records = sync_actor(_actor(tmp_path), stored, tmp_path, time.time())
    assert _kinds(records) == ["code_drift_detected", "CodeChange:auto_sync"]
    assert code.code_sha256 == _sha("print('new')\n") and code.status == "synced"

    code, records = sync_actor(_actor(tmp_path, sync="manual"), stored, tmp_path, time.time())
    assert _kinds(records) == ["code_drift_detected", "SyncUpdate:drift_detected"]
    assert (code.history_id, code.status) == ("h1", "drift_detected")


def test_after_a_rollback_the_unchanged_file_is_drift_not_a_new_version(tmp_path: Path) -> None:
    """Drift means "the file changed since its last sync": a rollback survives a restart."""
    _script(tmp_path, "print('new')\n")
    rolled_back = _stored("print('old')\n", file_text="print('new')\n", status="drift_detected")
    code, records = sync_actor(_actor(tmp_path, exec_mode="database"), rolled_back, tmp_path, 0.0)
    assert _kinds(records) == ["SyncUpdate:drift_detected"]  # no event: it was drift already
    assert code.history_id == "h1" and code.code_sha256 == _sha("print('old')\n")
    assert code.cache_path is not None and Path(code.cache_path).read_text() == "print('old')\n"


def test_a_missing_file_keeps_the_stored_code_and_is_reported_once(tmp_path: Path) -> None:
    cfg = _actor(tmp_path, exec_mode="auto")  # no job.py at all
    code, records = sync_actor(cfg, _stored("print('kept')\n"), tmp_path, 0.0)
    assert _kinds(records) == ["code_file_missing", "SyncUpdate:file_missing"]
    assert code.status == "file_missing" and code.cache_path is not None
    stored = _stored("print('kept')\n", status="file_missing")
    _, records = sync_actor(cfg, stored, tmp_path, 0.0)
    assert _kinds(records) == ["SyncUpdate:file_missing"]  # still missing: no second event


def test_the_before_run_check_hashes_only_when_the_stat_key_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _script(tmp_path)
    cfg = _actor(tmp_path, sync="before_run")
    reads: list[Path] = []
    real = codebook.read_snapshot
    later = {"ns": time.time_ns() + RACY_NS}  # the fresh file's ctime has settled: cacheable
    monkeypatch.setattr(
        codebook,
        "read_snapshot",
        lambda p, scan=True, runs_as=None: (
            reads.append(p) or real(p, scan=scan, clock_ns=lambda: later["ns"])
        ),
    )
    code = ActorCode(home=str(tmp_path), history_id="h1", code_sha256=_sha("print('{}')\n"))
    code.synced_sha = code.code_sha256
    assert look(cfg, code, tmp_path, 0.0) == [] and len(reads) == 1
    assert code.stat is not None
    for _ in range(100):
        assert look(cfg, code, tmp_path, 0.0) == []
    assert len(reads) == 1  # nothing moved: no read, no hash

    path.write_text("print('{} ')\n")
    records = look(cfg, code, tmp_path, 0.0)
    assert len(reads) == 2
    assert _kinds(records) == ["code_drift_detected", "CodeChange:auto_sync"]
    assert code.code_sha256 == _sha("print('{} ')\n")

    path.unlink()
    assert _kinds(look(cfg, code, tmp_path, 0.0)) == [
        "code_file_missing",
        "SyncUpdate:file_missing",
    ]
    assert look(cfg, code, tmp_path, 0.0) == []  # reported once
    _script(tmp_path, "print('{} ')\n")  # back, as it was
    assert _kinds(look(cfg, code, tmp_path, 0.0)) == ["SyncUpdate:synced"]


def test_actors_sharing_an_edited_script_read_it_once_between_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script run by many actors (or written just before the start, too recently for its
    stat key to be trusted) is read and parsed by the first actor's before-run check; the
    others reuse that read while the file's key holds, and read again once it moves."""
    path = _script(tmp_path)
    cfg = _actor(tmp_path)
    reads: list[Path] = []
    real = codebook.read_snapshot
    later = {"ns": time.time_ns() + RACY_NS}
    monkeypatch.setattr(
        codebook,
        "read_snapshot",
        lambda p, scan=True, runs_as=None: (
            reads.append(p) or real(p, scan=scan, clock_ns=lambda: later["ns"])
        ),
    )
    shared: codebook.SharedSnapshots = {}
    codes = [ActorCode(home=str(tmp_path)) for _ in range(50)]  # never read: no stat key yet
    for code in codes:
        look(cfg, code, tmp_path, 0.0, shared)
    assert len(reads) == 1 and all(code.seen_sha == _sha("print('{}')\n") for code in codes)

    path.write_text("print('edited')\n")
    later["ns"] = time.time_ns() + RACY_NS
    for code in codes:
        look(cfg, code, tmp_path, 0.0, shared)
    assert len(reads) == 2 and all(code.seen_sha == _sha("print('edited')\n") for code in codes)


def test_an_edit_without_auto_sync_marks_drift_and_the_run_records_the_files_hash(
    tmp_path: Path,
) -> None:
    """File mode with sync = "startup": the run executes the edited file, so it records the
    file's hash and no history id (no version holds that code yet)."""
    path = _script(tmp_path)
    cfg = _actor(tmp_path)
    code, _ = sync_actor(cfg, _stored("print('{}')\n"), tmp_path, 0.0)
    path.write_text("print('edited')\n")
    records = look(cfg, code, tmp_path, 0.0)
    assert _kinds(records) == ["code_drift_detected", "SyncUpdate:drift_detected"]
    update = records[-1]
    assert isinstance(update, SyncUpdate) and update.file_hash is None  # last sync unchanged
    assert code.seen_sha == _sha("print('edited')\n") and code.history_id == "h1"


@pytest.mark.timeout(10)
def test_a_fifo_a_device_or_a_huge_file_is_never_read_as_code(tmp_path: Path) -> None:
    """The supervisor reads scripts in its loop: a FIFO (or a link to one) would block it, a
    link to /dev/zero would fill its memory, and a huge file is no script. None is read."""
    os.mkfifo(tmp_path / "fifo.py")
    (tmp_path / "zero.py").symlink_to("/dev/zero")
    with open(tmp_path / "huge.py", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    for name in ("fifo.py", "zero.py", "huge.py"):
        assert read_snapshot(tmp_path / name) is None
    main = tmp_path / "main.py"
    main.write_text("import zero\nimport fifo\nprint(1)\n")
    snap = read_snapshot(main)
    assert snap is not None and snap.files == ("main.py",)  # neither module joins the bundle
