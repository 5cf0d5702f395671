"""How a run ended: the status that drives retries and the reason an operator reads.

The classification is data, not an exception: a script's failure is an ordinary outcome.
"""

from enum import StrEnum


class Status(StrEnum):
    """Final status of one attempt. Only ``failed_retryable`` is ever retried."""

    SUCCEEDED = "succeeded"
    FAILED_RETRYABLE = "failed_retryable"
    FAILED_PERMANENT = "failed_permanent"


class Reason(StrEnum):
    """Why an attempt failed (a succeeded attempt has no reason)."""

    EXIT_CODE = "exit_code"  # non-zero exit; 75 (EX_TEMPFAIL) or {"retryable": true} is retryable
    TIMEOUT = "timeout"  # wall-clock timeout_s passed; the process group was killed
    MEMORY_LIMIT = "memory_limit"  # the address-space limit (memory_mb) was hit
    CPU_LIMIT = "cpu_limit"  # the CPU-seconds limit (cpu_s) was hit
    FILE_SIZE_LIMIT = "file_size_limit"  # the file-size limit (fsize_mb) was hit
    SIGNAL = "signal"  # killed by a signal nobody in the supervisor sent
    INVALID_OUTPUT = "invalid_output"  # stdout was not exactly one JSON document
    OUTPUT_LIMIT = "output_limit"  # stdout grew past output_kb; the process group was killed
    SANDBOX_ERROR = "sandbox_error"  # the sandbox could not be set up (chdir, setuid, exec, ...)
    FILE_MISSING = "file_missing"  # the script file does not exist
    WORKER_LOST = "worker_lost"  # the worker holding the run died
    SUPERVISOR_LOST = "supervisor_lost"  # the supervisor died while the run was in flight
    SHUTDOWN = "shutdown"  # killed because the supervisor stopped and the grace period ran out
    POISON = "poison"  # its attempts killed their worker twice: never retried again
    UNKNOWN_ACTOR = (
        "unknown_actor"  # recovered after a restart, but the actor is no longer configured
    )


EX_TEMPFAIL = 75

RETRYABLE_REASONS = frozenset(
    {Reason.TIMEOUT, Reason.WORKER_LOST, Reason.SUPERVISOR_LOST, Reason.SHUTDOWN}
)
