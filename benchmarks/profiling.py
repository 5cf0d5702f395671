"""``--profile FILE``: the benchmark's supervisor under cProfile, to see where its time goes.

The supervisor runs as ``python -m cProfile -o FILE -m supervisor.cli start ...`` and writes
FILE when it exits, after the benchmark stopped it with SIGTERM. cProfile sees the main thread
(the loop: sockets, dispatch, the run book), not the batch writer's thread, and roughly doubles
the cost of Python calls: compare the parts of one profile with each other, not with an
unprofiled benchmark's figures. The README's benchmark section walks through an analysis.
"""

import sys
from pathlib import Path

HOW_TO_READ = """\
reading it: python -m pstats {file}
  then  sort tottime   (time in each function itself)   and  stats 30
  or    sort cumulative                                 and  stats 30
  and   callers NAME   (who calls a function, e.g. callers send)"""


def supervisor_command(config: Path, profile: str | None = None) -> list[str]:
    """The command line that starts the supervisor on ``config``, under cProfile when a
    ``profile`` file is given (then also saying, on stderr, how to read it)."""
    start = ["-m", "supervisor.cli", "start", "--config", str(config)]
    if not profile:
        return [sys.executable, *start]
    target = Path(profile).resolve()
    print(
        f"profiling the supervisor with cProfile into {target} (written when it stops)\n"
        + HOW_TO_READ.format(file=target),
        file=sys.stderr,
    )
    return [sys.executable, "-m", "cProfile", "-o", str(target), *start]
