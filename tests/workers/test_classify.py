"""classify() with real wait statuses: children that exit with a code or die of a signal."""

import os
import resource
import signal
from collections.abc import Callable

import pytest

from protocol.messages import Limits
from protocol.outcomes import Reason
from workers.classify import classify
from workers.sandbox import NOTE_MISSING, NOTE_SETUP, split_code_note


def status_of(child: Callable[[], None]) -> int:
    """The raw wait status of a forked child running ``child``."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(99)
    _, status, _ = os.wait4(pid, 0)
    return status


def exited(code: int) -> int:
    return status_of(lambda: os._exit(code))


def killed_by(sig: int) -> int:
    def die() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from SIGXCPU & co
        if sig != signal.SIGKILL:  # its disposition cannot be changed (nor needs to be)
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)

    status = status_of(die)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig
    return status


def test_exit_0_with_one_json_document_succeeds() -> None:
    outcome = classify(exited(0), b'  {"a": [1, 2]}\n\n')
    assert (outcome.status, outcome.reason, outcome.exit_code) == ("succeeded", None, 0)
    assert outcome.output == {"a": [1, 2]} and outcome.error is None


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        (b"", "printed nothing"),
        (b" \n\t", "printed nothing"),
        (b"hello world", "it starts with 'hello world'"),
        (b'{"a": 1}{"b": 2}', "not one JSON document"),
        (b"\xff\xfe\x00", "not one JSON document"),
        (b"NaN", "not one JSON document"),
    ],
)
def test_exit_0_without_exactly_one_json_document_is_invalid_output(
    stdout: bytes, expected: str
) -> None:
    outcome = classify(exited(0), stdout)
    assert (outcome.status, outcome.reason, outcome.output) == (
        "failed_permanent",
        "invalid_output",
        None,
    )
    assert expected in (outcome.error or "")


def test_invalid_output_preview_is_bounded() -> None:
    outcome = classify(exited(0), b"x" * 10_000)
    assert outcome.error is not None and len(outcome.error) < 400 and outcome.error.endswith("...")


def test_exit_75_is_retryable() -> None:
    outcome = classify(exited(75), b"")
    assert (outcome.status, outcome.reason, outcome.exit_code) == (
        "failed_retryable",
        "exit_code",
        75,
    )
    assert "EX_TEMPFAIL" in (outcome.error or "")


def test_other_exit_codes_are_permanent_and_keep_json_output() -> None:
    plain = classify(exited(3), b"half a line")
    assert (plain.status, plain.reason, plain.exit_code) == ("failed_permanent", "exit_code", 3)
    assert (plain.output, plain.error) == (None, "exited with code 3")
    listed = classify(exited(2), b"[1, 2]")
    assert (listed.status, listed.output) == ("failed_permanent", [1, 2])


def test_json_retryable_true_makes_an_exit_retryable_and_carries_its_error() -> None:
    outcome = classify(exited(1), b'{"retryable": true, "error": "db locked", "n": 1}')
    assert (outcome.status, outcome.reason, outcome.exit_code) == (
        "failed_retryable",
        "exit_code",
        1,
    )
    assert outcome.error == "db locked"
    assert outcome.output == {"retryable": True, "error": "db locked", "n": 1}


def test_only_a_literal_true_asks_for_a_retry() -> None:
    outcome = classify(exited(1), b'{"retryable": "yes", "error": 5}')
    assert outcome.status == "failed_permanent"
    assert outcome.error == "exited with code 1"  # a non-string "error" is not a message


def test_sandbox_notes_win_over_the_exit_status() -> None:
    setup = classify(exited(71), b"", note=NOTE_SETUP + b"cwd: [Errno 2] nope")
    assert (setup.status, setup.reason) == ("failed_permanent", "sandbox_error")
    assert setup.error == "sandbox setup: cwd: [Errno 2] nope"
    missing = classify(exited(71), b"", note=NOTE_MISSING + b"script: gone")
    assert (missing.status, missing.reason) == ("failed_permanent", "file_missing")


def test_an_uncaught_memoryerror_is_memory_limit() -> None:
    tail = b"Traceback (most recent call last):\n  ...\nMemoryError\n\n"
    memory = classify(exited(1), b"", stderr_tail=tail, limits=Limits(memory_mb=64))
    assert (memory.status, memory.reason) == ("failed_permanent", "memory_limit")
    assert "64 MiB" in (memory.error or "")
    other = classify(exited(2), b"", stderr_tail=tail)
    assert other.reason == "exit_code"  # only what an uncaught exception exits with


def test_sigxcpu_is_cpu_limit() -> None:
    outcome = classify(killed_by(signal.SIGXCPU), b"", limits=Limits(cpu_s=2))
    assert (outcome.status, outcome.reason, outcome.signal) == (
        "failed_permanent",
        "cpu_limit",
        signal.SIGXCPU,
    )


def test_sigkill_at_the_cpu_hard_limit_is_cpu_limit() -> None:
    status = killed_by(signal.SIGKILL)
    outcome = classify(status, b"", cpu_used_s=3.0, limits=Limits(cpu_s=2))
    assert outcome.reason == "cpu_limit"


def test_unexplained_sigkill_says_perhaps_out_of_memory() -> None:
    outcome = classify(killed_by(signal.SIGKILL), b"{}", cpu_used_s=0.1, limits=Limits(cpu_s=2))
    assert (outcome.status, outcome.reason, outcome.signal) == (
        "failed_permanent",
        "signal",
        signal.SIGKILL,
    )
    assert outcome.error == "killed by SIGKILL (perhaps out of memory)"
    assert outcome.exit_code is None and outcome.output is None


def test_sigxfsz_is_file_size_limit() -> None:
    outcome = classify(killed_by(signal.SIGXFSZ), b"")
    assert (outcome.status, outcome.reason) == ("failed_permanent", "file_size_limit")


def test_other_signals_are_permanent_and_named() -> None:
    outcome = classify(killed_by(signal.SIGSEGV), b"")
    assert (outcome.status, outcome.reason, outcome.signal) == (
        "failed_permanent",
        "signal",
        signal.SIGSEGV,
    )
    assert outcome.error == "killed by SIGSEGV"


def test_our_kills_win_even_over_a_clean_exit() -> None:
    clean = exited(0)
    timeout = classify(clean, b"{}", killed=Reason.TIMEOUT, timeout_s=1.5)
    assert (timeout.status, timeout.reason) == ("failed_retryable", "timeout")
    assert timeout.error == "timed out after 1.5 s; killed with SIGTERM"
    escalated = classify(killed_by(signal.SIGKILL), b"", killed=Reason.TIMEOUT, timeout_s=1)
    assert "SIGKILL" in (escalated.error or "")
    output = classify(killed_by(signal.SIGKILL), b"x" * 100, killed=Reason.OUTPUT_LIMIT)
    assert (output.status, output.reason, output.output) == (
        "failed_permanent",
        "output_limit",
        None,
    )
    shutdown = classify(killed_by(signal.SIGTERM), b"", killed=Reason.SHUTDOWN)
    assert (shutdown.status, shutdown.reason, shutdown.signal) == (
        "failed_retryable",
        "shutdown",
        signal.SIGTERM,
    )


def test_a_cancel_is_cancelled_however_the_run_then_ended() -> None:
    for status in (exited(0), exited(75), killed_by(signal.SIGTERM)):
        outcome = classify(status, b"{}", killed=Reason.CANCELLED)
        assert (outcome.status, outcome.reason, outcome.output) == ("cancelled", "cancelled", None)
    forced = classify(killed_by(signal.SIGKILL), b"", killed=Reason.CANCELLED)
    assert forced.error == (
        "cancelled by an operator while running; killed with SIGKILL after the grace period"
    )


def test_our_kills_win_over_every_note() -> None:
    """Only sandbox setup can write notes, but a timeout stays a timeout whatever they say."""
    for note in (NOTE_SETUP + b"forged", NOTE_MISSING + b"forged", b"M"):
        outcome = classify(exited(71), b"", note=note, killed=Reason.TIMEOUT, timeout_s=1)
        assert (outcome.status, outcome.reason) == ("failed_retryable", "timeout")


def test_a_code_note_is_split_from_a_setup_note_that_follows_it() -> None:
    """A child that ran a script other than the version sent says so first; a setup failure
    after that (say, the exec of exec mode) still classifies as one."""
    sha = "ab" * 32
    assert split_code_note(b"C" + sha.encode() + b"Eexec: no such file") == (
        sha,
        b"Eexec: no such file",
    )
    assert split_code_note(b"C" + sha.encode()) == (sha, b"")
    assert split_code_note(b"Fscript: missing") == (None, b"Fscript: missing")
    assert split_code_note(b"") == (None, b"")
