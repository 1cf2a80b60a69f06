"""What every HTTP handler shares: reading a JSON body, writing JSON or problem+json, and turning
errors into responses. Handlers stay thin: parse, call ``shared``, answer.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
import psycopg2
import pymongo.errors
import redis
from pydantic import BaseModel

from shared.errors import (
    DependencyUnavailable,
    InternalError,
    PayloadTooLarge,
    RequestError,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from shared.settings import get_settings

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = "5"

Handler = Callable[[func.HttpRequest], func.HttpResponse]

# A route parameter in an Azure route template: {id}, {id:int}, {*rest}
ROUTE_PARAMETER = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?(\??)\}")


@dataclass(frozen=True)
class Operation:
    """How an HTTP function appears in the OpenAPI document; attached to the handler."""

    summary: str
    request: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    query: type[BaseModel] | None = None
    headers: tuple[str, ...] = ()


def registered_functions(app: func.FunctionApp) -> list[Any]:
    """``app.get_functions()``, callable more than once.

    ``get_functions`` records the names it has validated in ``functions_bindings`` and raises on
    a name it has seen, so a second call (the worker's indexing, then the OpenAPI document or the
    local host) would fail; the functions themselves are built once and returned as they are.
    """
    app.functions_bindings = None
    return list(app.get_functions())


def read_json(req: func.HttpRequest, limit: int | None = None) -> bytes:
    """The raw JSON body, after the size cap (413; default ``MAX_BODY_BYTES``) and content-type
    (415) checks."""
    limit = limit or get_settings().max_body_bytes
    declared = req.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The body is {declared} bytes; the limit is {limit} bytes.")
    body = req.get_body()
    if len(body) > limit:
        raise PayloadTooLarge(f"The body is {len(body)} bytes; the limit is {limit} bytes.")
    content_type = (req.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {content_type or 'missing'}."
        )
    return body


def _json_default(value: Any) -> str:
    """Dates and times as ISO 8601; anything else JSON cannot hold as its text."""
    return value.isoformat() if isinstance(value, date) else str(value)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=_json_default),
        status_code=status,
        headers=headers,
        mimetype="application/json",
        charset="utf-8",
    )


def problem_response(error: RequestError, instance: str | None = None) -> func.HttpResponse:
    """An RFC 9457 problem document for ``error``."""
    return func.HttpResponse(
        json.dumps(error.problem(instance), ensure_ascii=False),
        status_code=error.status,
        headers=error.headers or None,
        mimetype=PROBLEM_JSON,
        charset="utf-8",
    )


def _dependency_error(exc: Exception) -> DependencyUnavailable | None:
    if isinstance(exc, DependencyUnavailable):
        return exc
    if isinstance(exc, pymongo.errors.ConnectionFailure | pymongo.errors.ExecutionTimeout):
        return DependencyUnavailable("MongoDB", str(exc))
    if isinstance(exc, psycopg2.OperationalError):
        return DependencyUnavailable("PostgreSQL", str(exc))
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return DependencyUnavailable("Redis", str(exc))
    return None


def endpoint(operation: Operation) -> Callable[[Handler], Handler]:
    """Wrap a handler: errors become problem+json, never a stack trace; document the operation."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def wrapper(req: func.HttpRequest) -> func.HttpResponse:
            instance = urlsplit(req.url).path
            try:
                return handler(req)
            except RequestError as exc:
                return problem_response(exc, instance)
            except Exception as exc:
                unavailable = _dependency_error(exc)
                if unavailable is None:
                    log.exception("Unhandled error in %s", handler.__name__)
                    return problem_response(InternalError("See the function's log."), instance)
                log.warning("%s: %s", handler.__name__, unavailable)
                error = ServiceUnavailable(
                    f"{unavailable.dependency} did not answer in time; retry later.",
                    headers={"Retry-After": RETRY_AFTER_SECONDS},
                )
                return problem_response(error, instance)

        wrapper.operation = operation  # type: ignore[attr-defined]
        return wrapper

    return decorate
