"""``config show``: the effective configuration, each value with where it came from.

The sources are computed where settings are resolved (:func:`supervisor.settings.
resolve_settings`, :func:`supervisor.config.actor_origins`); this module only presents them,
with every secret masked: passwords in URLs, webhook secrets, credential headers, and
environment values or arguments whose names say they hold a token, key or password.
"""

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

from supervisor.alerts.config import AlertConfig
from supervisor.cli.common import EXIT_OK, command, config_flag, load
from supervisor.cli.run import START_SETTINGS, add_setting_flags
from supervisor.config import ActorConfig, Config, actor_origins
from supervisor.schedule import Schedule
from supervisor.settings import SETTINGS
from supervisor.store.urls import redact_url

MASK = "***"
# a name that says its value is a credential: API_TOKEN, secret, password, X-Api-Key, Cookie...
_SECRET_NAME = re.compile(r"(?i)(token|secret|passw|pwd|key|auth|cookie|credential|session)")
_SECRET_ARG = re.compile(r"(?i)^(--?[a-z0-9_-]*(token|secret|passw|key|auth)[a-z0-9_-]*=).+$")


def add_config_commands(sub: Any) -> None:
    group = command(sub, "config", "the effective configuration", _usage)
    actions = group.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = command(
        actions,
        "show",
        "every setting, actor and alert in effect, with where each value came from "
        "(flag, environment, file, default); secrets masked",
        cmd_config_show,
    )
    config_flag(show)
    add_setting_flags(show)  # the flags `start` takes: answers for a given command line
    show.add_argument("--json", action="store_true", help="machine-readable output")


def _usage(args: argparse.Namespace) -> int:  # argparse requires ACTION; never reached
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    config = load(args, *(s.name for s in START_SETTINGS))
    data = effective(config)
    if args.json:
        print(orjson.dumps(data).decode())
    else:
        print(render(data))
    return EXIT_OK


def effective(config: Config) -> dict[str, Any]:
    """The configuration as JSON-friendly data: ``{"value": ..., "source": ..., "from": ...}``
    per setting and actor key; secrets masked."""
    settings = {
        s.name: {
            "value": _mask_setting(s.name, _plain(getattr(config.supervisor, s.name))),
            "source": config.sources[s.name],
            "from": config.origins[s.name],
        }
        for s in SETTINGS
    }
    return {
        "config": str(config.path) if config.path is not None else None,
        "base_dir": str(config.base_dir),
        "supervisor": settings,
        "actors": {name: _actor(config, actor) for name, actor in config.actors.items()},
        "alerts": [_alert(config, index, alert) for index, alert in enumerate(config.alerts)],
    }


def _actor(config: Config, actor: ActorConfig) -> dict[str, Any]:
    origins = actor_origins(config, actor.name)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(actor):
        value = _plain(getattr(actor, field.name))
        if field.name == "env":
            value = {k: MASK if _SECRET_NAME.search(k) else v for k, v in value.items()}
        elif field.name == "command" and isinstance(value, list):
            value = [_mask_arg(str(a)) for a in value]
        source, origin = origins.get(field.name, ("default", "default"))
        values[field.name] = {"value": value, "source": source, "from": origin}
    return values


def _alert(config: Config, index: int, alert: AlertConfig) -> dict[str, Any]:
    """An ``[[alerts]]`` entry always comes from the file; its secrets never leave it."""
    data = _plain(alert)
    data["secret"] = MASK if alert.secret is not None else None
    data["headers"] = {k: MASK if _SECRET_NAME.search(k) else v for k, v in alert.headers.items()}
    if alert.webhook:
        data["webhook"] = mask_url(alert.webhook)
    if alert.command:
        data["command"] = [_mask_arg(a) for a in alert.command]
    where = f"{config.path}: " if config.path is not None else ""
    return {"value": data, "source": "file", "from": f"{where}alerts[{index}]"}


def mask_url(url: str) -> str:
    """``url`` without its password and without the values of credential-like query keys."""
    url = redact_url(url)
    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    if parts.query:
        query = [(k, MASK if _SECRET_NAME.search(k) else v) for k, v in parse_qsl(parts.query)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()


def _mask_setting(name: str, value: Any) -> Any:
    if isinstance(value, str) and name in ("database", "public_url"):
        return mask_url(value)
    return value


def _mask_arg(arg: str) -> str:
    return _SECRET_ARG.sub(lambda m: m.group(1) + MASK, arg)


def _plain(value: Any) -> Any:
    """Tuples, frozensets, paths, schedules and dataclasses as JSON-friendly values."""
    if isinstance(value, Schedule):
        return value.describe()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def render(data: dict[str, Any]) -> str:
    """One line per value: ``key = value    (from)``, grouped like the file."""
    lines = [f"# configuration: {data['config'] or '(no file: defaults, environment, flags)'}"]
    lines.append("[supervisor]")
    lines += _lines(data["supervisor"])
    for name, keys in data["actors"].items():
        lines.append(f"\n[[actors]] {name}")
        lines += _lines(keys)
    for alert in data["alerts"]:
        value = alert["value"]
        lines.append(f"\n[[alerts]] {value['name']}    # {alert['from']}")
        lines += [f"{k} = {_text(v)}" for k, v in value.items() if k != "name"]
    return "\n".join(lines)


def _lines(entries: dict[str, dict[str, Any]]) -> list[str]:
    rows = [(f"{k} = {_text(e['value'])}", e["from"]) for k, e in entries.items()]
    width = min(max((len(r[0]) for r in rows), default=0), 48)  # a long list does not push
    return [f"{text.ljust(width)}    # {origin}" for text, origin in rows]


def _text(value: Any) -> str:
    return orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
