"""The ceiling's bare loop, in a fresh interpreter of its own: ``python ceiling.py MODE COUNT
[SCRIPT PYTHON]``.

It runs COUNT runs of the bare mechanism -- fork a child that reads a JSON document from a pipe
and writes one back (fork mode), or ``PYTHON SCRIPT`` spawned the same way (exec mode) -- and
prints one JSON line: ``{"elapsed_s": ..., "cpu_s": ...}``, the loop's wall time (its
interpreter's start-up left out) and the CPU of the loop and its children.

Run by ``run.py``'s ``measure_ceiling``. A loop forked from the benchmark itself measured that
process instead of the mechanism: its image (everything the benchmark had imported and
measured) made each fork dearer, by up to 1.7 times the CPU of this one, and varied from one
invocation to the next. This module imports only what the loop uses.
"""

import json
import os
import resource
import subprocess
import sys
import time

INPUT = {"n": 1, "payload": "x" * 64}


def fork_loop(count: int) -> None:
    """Fork a child per run; it reads the JSON input from a pipe and writes JSON back."""
    data = json.dumps(INPUT).encode()
    for _ in range(count):
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(in_w)
            os.close(out_r)
            request = json.loads(os.read(in_r, 65536))
            os.write(out_w, json.dumps({"ok": True, "echo": request}).encode())
            os._exit(0)
        os.close(in_r)
        os.close(out_w)
        os.write(in_w, data)
        os.close(in_w)
        chunks = []
        while chunk := os.read(out_r, 65536):
            chunks.append(chunk)
        os.close(out_r)
        os.waitpid(pid, 0)
        json.loads(b"".join(chunks))


def exec_loop(count: int, script: str, python: str) -> None:
    """Spawn ``python script.py`` per run, JSON in and out (no -I: it drops the script dir)."""
    data = json.dumps(INPUT).encode()
    for _ in range(count):
        proc = subprocess.run([python, script], input=data, capture_output=True, check=True)
        json.loads(proc.stdout)


def cpu_s() -> float:
    """CPU seconds of this process and of its reaped children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main(argv: list[str]) -> None:
    mode, count = argv[0], int(argv[1])
    cpu, started = cpu_s(), time.perf_counter()
    if mode == "fork":
        fork_loop(count)
    else:
        exec_loop(count, argv[2], argv[3])
    elapsed = time.perf_counter() - started
    print(json.dumps({"elapsed_s": elapsed, "cpu_s": cpu_s() - cpu}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
