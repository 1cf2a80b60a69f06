"""The exceptions the app raises, under one root.

    SalesPredictError
    ├── SettingsError               a setting is missing or malformed (named in the message)
    ├── DependencyUnavailable       MongoDB/PostgreSQL/Redis did not answer in time -> 503
    └── RequestError                the caller's request cannot be served -> problem+json
        ├── MalformedJson           400
        ├── NotFound                404
        ├── Conflict                409
        │   └── NothingToRollBack   no earlier model to go back to
        ├── PreconditionFailed      412
        ├── PayloadTooLarge         413
        ├── UnsupportedMediaType    415
        ├── InvalidInput            422, with the path of every invalid field
        ├── InternalError           500, never with details
        └── ServiceUnavailable      503, with Retry-After
            └── ArtifactTampered    a stored model's bytes do not match their SHA-256

Handlers turn a ``RequestError`` into an RFC 9457 ``application/problem+json`` response; nothing
the client sees ever contains a stack trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError


class SalesPredictError(Exception):
    """Root of every error raised on purpose by salespredict."""


class SettingsError(SalesPredictError):
    """A setting is missing or malformed; the message names it and says how to fix it."""


class DependencyUnavailable(SalesPredictError):
    """A server the request needs did not answer within its timeout."""

    def __init__(self, dependency: str, detail: str) -> None:
        super().__init__(f"{dependency} is unavailable: {detail}")
        self.dependency = dependency
        self.detail = detail


@dataclass(frozen=True)
class FieldProblem:
    """One invalid field: its path (``attributes.colour.$where``) and what is wrong with it."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class RequestError(SalesPredictError):
    """A request that cannot be served; rendered as problem+json with ``status``."""

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = [e.as_dict() for e in self.errors]
        return body


class MalformedJson(RequestError):
    status, title = 400, "Malformed JSON"


class NotFound(RequestError):
    status, title = 404, "Not found"


class Conflict(RequestError):
    status, title = 409, "Conflict"


class NothingToRollBack(Conflict):
    """There is no earlier activation to go back to."""


class PreconditionFailed(RequestError):
    status, title = 412, "Precondition failed"


class PayloadTooLarge(RequestError):
    status, title = 413, "Payload too large"


class UnsupportedMediaType(RequestError):
    status, title = 415, "Unsupported media type"


class InvalidInput(RequestError):
    status, title = 422, "Invalid input"

    @classmethod
    def of(cls, problems: list[FieldProblem]) -> InvalidInput:
        """The error for these invalid fields."""
        return cls(f"{len(problems)} invalid field(s).", errors=problems)


class InternalError(RequestError):
    status, title = 500, "Internal error"


class ServiceUnavailable(RequestError):
    status, title = 503, "Service unavailable"


class ArtifactTampered(ServiceUnavailable):
    """A model artifact whose SHA-256 differs from the one recorded when it was stored."""


def from_validation_error(exc: ValidationError) -> RequestError:
    """A pydantic error as the caller should see it: 400 for broken JSON, else 422 by field."""
    problems: list[FieldProblem] = []
    for err in exc.errors(include_url=False):
        ctx = err.get("ctx") or {}
        if err["type"] == "json_invalid":
            return MalformedJson(f"The body is not valid JSON: {ctx.get('error', err['msg'])}.")
        if err["type"] == "unsafe_attributes":  # paths from the attributes field down
            parent = "".join(f"{p}." for p in err["loc"][:-1])
            problems.extend(FieldProblem(parent + path, m) for path, m in ctx["problems"])
            continue
        message = err["msg"].removeprefix("Value error, ")
        problems.append(FieldProblem(".".join(str(p) for p in err["loc"]), message))
    return InvalidInput.of(problems)
