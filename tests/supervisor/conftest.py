"""Fixtures that start real supervisors and always stop them."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.supervisor.harness import RunningSupervisor, start_on_config, start_supervisor


@pytest.fixture
def supervisors(public_tmp: Path) -> Iterator[Callable[..., RunningSupervisor]]:
    """``supervisors(actors_toml, **options)`` starts one; all are killed at teardown."""
    started: list[RunningSupervisor] = []

    def start(actors: str | None = None, **options: Any) -> RunningSupervisor:
        if actors is None:  # options name an existing config: start_on_config(config, endpoint)
            running = start_on_config(**options)
        else:
            running = start_supervisor(public_tmp, actors, **options)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(timeout=30)
