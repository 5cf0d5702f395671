"""The HTTP process's entry point: read the settings, build the app, serve the inherited socket.

uvicorn serves the socket the supervisor bound (``fd``) and stops gracefully on SIGTERM. A
watchdog task exits when the supervisor is gone (the process is reparented), so an HTTP
process never outlives the supervisor it describes, even one killed with SIGKILL.
"""

import asyncio
import logging
import os
import socket
import sys

import orjson
import uvicorn

from supervisor.http.settings import HttpSettings
from workers.logs import setup_logging

log = logging.getLogger(__name__)


async def _watch_parent(server: uvicorn.Server, parent: int) -> None:
    while not server.should_exit:
        if os.getppid() != parent:
            log.warning("http: the supervisor is gone; stopping")
            server.should_exit = True
            return
        await asyncio.sleep(1.0)


def main() -> int:
    settings = HttpSettings.from_json(orjson.loads(sys.stdin.buffer.read()))
    setup_logging(settings.log_level, settings.log_format)
    from supervisor.http.app import build_app  # after logging is set up

    app = build_app(settings)
    sock = socket.socket(fileno=settings.fd)
    config = uvicorn.Config(
        app,
        log_config=None,  # our handlers, set up above
        access_log=False,  # request lines would carry ids and query strings, never tokens
        lifespan="off",
        timeout_graceful_shutdown=3,
        server_header=False,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        watchdog = asyncio.create_task(_watch_parent(server, settings.supervisor_pid))
        try:
            await server.serve(sockets=[sock])
        finally:
            watchdog.cancel()

    asyncio.run(serve())
    return 0
