"""The OpenAPI 3.1 document, generated from what the app registers and the pydantic models.

Paths and methods come from the FunctionApp's HTTP triggers; bodies, parameters and responses
from the ``Operation`` each handler carries. Nothing here is written twice.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import azure.functions as func
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.http import PROBLEM_JSON, ROUTE_PARAMETER, Operation, registered_functions

ROUTE_PREFIX = "/api/"


class FieldProblemDoc(BaseModel):
    path: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldProblemDoc] | None = None


STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "Done; no content",
    400: "Malformed JSON",
    401: "Missing or wrong function key",
    404: "Not found",
    412: "The If-Match version is stale",
    413: "Body over the size cap",
    415: "Content-Type is not JSON",
    422: "Invalid fields (each listed with its path)",
    503: "A dependency is unavailable; retry after Retry-After seconds",
}


def http_operations(app: func.FunctionApp) -> list[tuple[str, list[str], str, Operation, bool]]:
    """(route, methods, function name, operation, anonymous) of every documented HTTP trigger."""
    found = []
    for function in registered_functions(app):
        trigger = function.get_trigger()
        operation = getattr(function.get_user_function(), "operation", None)
        if trigger is None or trigger.type != "httpTrigger" or operation is None:
            continue
        methods = [str(getattr(m, "value", m)) for m in (trigger.methods or ["GET"])]
        anonymous = getattr(trigger.auth_level, "value", trigger.auth_level) == "anonymous"
        found.append((trigger.route, methods, function.get_function_name(), operation, anonymous))
    return found


@functools.cache
def document(app: func.FunctionApp) -> dict[str, Any]:
    """The document for ``app`` (built once: the registered functions do not change)."""
    operations = http_operations(app)
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (Problem, "serialization")
    ]
    for _, _, _, op, _ in operations:
        if op.request is not None:
            models.append((op.request, "validation"))
        models.extend((m, "serialization") for m in op.responses.values() if m is not None)
    refs, defs = models_json_schema(
        list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}"
    )

    paths: dict[str, dict[str, Any]] = {}
    for route, methods, name, op, anonymous in operations:
        path = ROUTE_PREFIX + ROUTE_PARAMETER.sub(r"{\2}", route)
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for _, name, _, _ in ROUTE_PARAMETER.findall(route)
        ]
        if op.query is not None:
            schema = op.query.model_json_schema()
            parameters += [
                {"name": field, "in": "query", "required": False, "schema": prop}
                for field, prop in schema["properties"].items()
            ]
        parameters += [
            {"name": h, "in": "header", "required": False, "schema": {"type": "string"}}
            for h in op.headers
        ]
        responses: dict[str, Any] = {}
        for status, model in sorted(op.responses.items()):
            entry: dict[str, Any] = {"description": STATUS_TEXT.get(status, str(status))}
            if model is not None:
                entry["content"] = {"application/json": {"schema": refs[(model, "serialization")]}}
            elif status >= 400:
                entry["content"] = {PROBLEM_JSON: {"schema": refs[(Problem, "serialization")]}}
            responses[str(status)] = entry
        if not anonymous:
            responses["401"] = {
                "description": STATUS_TEXT[401],
                "content": {PROBLEM_JSON: {"schema": refs[(Problem, "serialization")]}},
            }
        for method in methods:
            operation: dict[str, Any] = {
                "operationId": name,
                "summary": op.summary,
                "parameters": parameters,
                "responses": responses,
            }
            if op.request is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": refs[(op.request, "validation")]}},
                }
            if anonymous:
                operation["security"] = []
            paths.setdefault(path, {})[method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "salespredict",
            "version": "0.1.0",
            "description": "Capture sales opportunities; predict whether each open one is won.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "functionKeyHeader": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
            },
        },
        "security": [{"functionKeyHeader": []}, {"functionKeyQuery": []}],
    }
