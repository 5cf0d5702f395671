"""What the supervisor hands its HTTP process, as one frozen object read from stdin."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """What the supervisor hands its HTTP process (see ``HttpSide.prepare``)."""

    listen: str
    token_file: str  # always one: configured, or generated in the state folder
    control: str
    curve_server_key: str | None
    curve_client_key: str | None
    database: str
    base_dir: str
    log_level: str = "info"
    log_format: str = "text"
    supervisor_pid: int = 0
    fd: int = -1
    address: tuple[str, int] = ("127.0.0.1", 0)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "HttpSettings":
        data = dict(data)
        data["address"] = tuple(data.get("address") or ("127.0.0.1", 0))
        return cls(**data)
