"""Errors as ``application/problem+json`` (RFC 9457) with a stable ``code``.

Every refusal the API makes is a :class:`Problem`; the supervisor's own error codes
(``unknown_actor``, ``paused``, ``busy``, ...) map to HTTP statuses in :data:`CLIENT_CODES`.
"""

from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

from protocol.client import ClientError, ClientTimeout

MEDIA_TYPE = "application/problem+json"

# the supervisor's error code -> HTTP status
CLIENT_CODES = {
    "unknown_actor": 404,
    "unknown_workflow": 404,
    "unknown_workflow_run": 404,
    "paused": 409,
    "busy": 429,
    "shutting_down": 503,
    "bad_request": 400,
    "result_unavailable": 404,
    "refresh_failed": 409,
    "unknown_run": 404,
    "not_cancellable": 409,
    "store_unavailable": 503,
}


class Problem(Exception):
    """An HTTP error with a stable ``code`` (``unknown_actor``, ``bad_parameter``, ...)."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def problem_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"about:blank#{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def from_client_error(exc: ClientError) -> Problem:
    """The supervisor refused, or did not answer: the matching problem."""
    if isinstance(exc, ClientTimeout):
        return Problem(503, "supervisor_unreachable", "the supervisor did not answer in time")
    status = CLIENT_CODES.get(exc.code, 502)
    headers = {"Retry-After": "1"} if exc.code == "busy" else None
    return Problem(status, exc.code, exc.message, headers)
