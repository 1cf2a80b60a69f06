"""The local host: serves a ``func.FunctionApp`` the way the Azure Functions host does.

Every HTTP trigger the app registers is served at ``/api/<route>`` with its methods, route
parameters and auth level (function keys from the settings, as the ``x-functions-key`` header or
the ``code`` query parameter). Every timer trigger runs on its NCRONTAB schedule (six fields,
seconds first, ``%SETTING%`` resolved) and on demand through ``POST /admin/functions/<name>``
with the admin key, like the Functions host's admin API. There is no routing table of its own:
the rules are read from the app's registered functions when the host is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from azure.functions.timer import TimerRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from shared.errors import SettingsError
from shared.http import ROUTE_PARAMETER, registered_functions
from shared.schedule import check as schedule_check
from shared.schedule import next_fire as schedule_next_fire
from shared.settings import Settings

log = logging.getLogger("salespredict.host")

ROUTE_PREFIX = "/api"
MAX_REQUEST_BYTES = 100 * 1024 * 1024  # the Functions host's own limit
_CONVERTERS = {None: "", "int": "int:", "float": "float:", "alpha": "", "guid": ""}


def werkzeug_rule(route: str) -> str:
    """An Azure route template (``items/{id}``, ``{id:int}``, ``{*rest}``) as a werkzeug rule."""

    def convert(match: re.Match[str]) -> str:
        catch_all, name, constraint, optional = match.groups()
        if optional:
            raise SettingsError(f"The local host does not serve optional route parameters: {route}")
        if catch_all:
            return f"<path:{name}>"
        if constraint not in _CONVERTERS:
            raise SettingsError(f"Unsupported route constraint {constraint!r} in {route}")
        return f"<{_CONVERTERS[constraint]}{name}>"

    return f"{ROUTE_PREFIX}/{ROUTE_PARAMETER.sub(convert, route.strip('/'))}"


def _value(enum_or_str: Any) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


@dataclass(frozen=True)
class HttpFunction:
    name: str
    route: str
    methods: tuple[str, ...]
    auth_level: str
    arg_name: str
    call: Callable[..., Any]


@dataclass(frozen=True)
class TimerFunction:
    name: str
    schedule: str
    run_on_startup: bool
    arg_name: str
    call: Callable[..., Any]


def _invoke(call: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(call):
        return asyncio.run(call(**kwargs))
    return call(**kwargs)


def _given_key(request: Request) -> str:
    """The function key a caller sent, as the Functions host accepts it."""
    return request.headers.get("x-functions-key") or request.args.get("code") or ""


def _problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return Response(json.dumps(body), status, headers, content_type="application/problem+json")


class LocalHost:
    """A WSGI application serving ``app``'s HTTP triggers, plus a scheduler for its timers."""

    def __init__(self, app: func.FunctionApp, settings: Settings) -> None:
        if not settings.function_key or not settings.admin_key:
            raise SettingsError(
                "SALESPREDICT_FUNCTION_KEY and SALESPREDICT_ADMIN_KEY must be set for the local "
                "host (`salespredict serve` writes random ones into local.settings.json)."
            )
        self.settings = settings
        self.http: dict[str, HttpFunction] = {}
        self.timers: dict[str, TimerFunction] = {}
        rules = [Rule("/admin/functions/<name>", endpoint="admin:run", methods=["POST"])]
        for function in registered_functions(app):
            trigger = function.get_trigger()
            name = function.get_function_name()
            if trigger is None or name is None:
                continue
            call = function.get_user_function()
            if trigger.type == "httpTrigger":
                methods = tuple(_value(m) for m in trigger.methods or ())  # none: every method
                fn = HttpFunction(
                    name, trigger.route or name, methods, _value(trigger.auth_level),
                    trigger.name, call,
                )  # fmt: skip
                self.http[name] = fn
                rules.append(
                    Rule(werkzeug_rule(fn.route), endpoint=name, methods=list(methods) or None)
                )
            elif trigger.type == "timerTrigger":
                self.timers[name] = TimerFunction(
                    name, self.resolve(trigger.schedule), bool(trigger.run_on_startup),
                    trigger.name, call,
                )  # fmt: skip
        self.url_map = Map(rules, strict_slashes=False, merge_slashes=False)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: BaseWSGIServer | None = None

    def resolve(self, schedule: str) -> str:
        """Substitute ``%SETTING%`` and check the six-field NCRONTAB expression."""

        def setting(match: re.Match[str]) -> str:
            name = match.group(1)
            values = self.settings.model_dump(by_alias=True, mode="json")
            if name not in values:
                raise SettingsError(f"Timer schedule refers to unknown setting %{name}%")
            return str(values[name])

        return schedule_check(re.sub(r"%([A-Za-z0-9_]+)%", setting, schedule))

    # ----------------------------------------------------------------------------- HTTP

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        request.max_content_length = MAX_REQUEST_BYTES
        return self.dispatch(request)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, params = adapter.match()
        except MethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or []))
            return _problem(405, "Method not allowed", f"Allowed: {allowed}.", {"Allow": allowed})
        except NotFound:
            return _problem(404, "Not found", f"No function serves {request.path}.")
        except HTTPException as exc:
            return _problem(exc.code or 400, exc.name, exc.description or "")
        if endpoint == "admin:run":
            return self._admin_run(request, params["name"])
        function = self.http[endpoint]
        if not self._authorised(request, function.auth_level):
            return _problem(401, "Unauthorized", "Send a valid function key as the "
                            "x-functions-key header or the code query parameter.")  # fmt: skip
        return self._invoke_http(function, request, params)

    def _authorised(self, request: Request, level: str) -> bool:
        if level == "anonymous":
            return True
        given = _given_key(request)
        keys = [self.settings.admin_key]
        if level == "function":
            keys.append(self.settings.function_key)
        return any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)

    def _invoke_http(
        self, function: HttpFunction, request: Request, params: Mapping[str, Any]
    ) -> Response:
        try:
            body = request.get_data(cache=False)
        except HTTPException as exc:
            return _problem(exc.code or 413, exc.name, exc.description or "")
        req = func.HttpRequest(
            method=request.method,
            url=request.url,
            headers=dict(request.headers),
            params={k: v for k, v in request.args.items()},
            route_params={k: str(v) for k, v in params.items()},
            body=body,
        )
        reason = f"This function was called by an HTTP {request.method} {request.path}"
        try:
            result = self._run(function.name, reason, function.call, {function.arg_name: req})
        except Exception:
            return _problem(500, "Internal error", "The function failed; see the host log.")
        return self._to_response(result)

    @staticmethod
    def _to_response(result: Any) -> Response:
        if not isinstance(result, func.HttpResponse):
            return Response(status=204 if result is None else 200, response=str(result or ""))
        headers = dict(result.headers)
        if not any(k.lower() == "content-type" for k in headers) and result.mimetype:
            charset = f"; charset={result.charset}" if result.charset else ""
            headers["Content-Type"] = f"{result.mimetype}{charset}"
        return Response(result.get_body(), result.status_code, headers)

    def _admin_run(self, request: Request, name: str) -> Response:
        if not hmac.compare_digest(_given_key(request).encode(), self.settings.admin_key.encode()):
            return _problem(401, "Unauthorized", "Running a function needs the admin key.")
        if name not in self.timers:
            return _problem(404, "Not found", f"No non-HTTP function named {name}.")
        try:
            self.run_timer(name, "This function was programmatically called via the host APIs.")
        except Exception:
            return _problem(500, "Internal error", f"{name} failed; see the host log.")
        return Response(status=202)

    # ----------------------------------------------------------------------------- timers

    def run_timer(self, name: str, reason: str = "Timer fired", past_due: bool = False) -> None:
        timer = self.timers[name]
        request = TimerRequest(past_due=past_due)
        self._run(name, reason, timer.call, {timer.arg_name: request})

    def next_fire(self, name: str, after: datetime | None = None) -> datetime:
        return schedule_next_fire(self.timers[name].schedule, after or datetime.now(UTC))

    def _schedule_loop(self, name: str) -> None:
        if self.timers[name].run_on_startup:
            self._safe_timer(name, "Timer fired on startup")
        while not self._stop.is_set():
            due = self.next_fire(name)
            if self._stop.wait(max(0.0, (due - datetime.now(UTC)).total_seconds())):
                return
            late = (datetime.now(UTC) - due).total_seconds() > 1
            self._safe_timer(name, f"Timer fired at {due.isoformat()}", past_due=late)

    def _safe_timer(self, name: str, reason: str, past_due: bool = False) -> None:
        with contextlib.suppress(Exception):  # _run logged it; the schedule goes on
            self.run_timer(name, reason, past_due)

    # ----------------------------------------------------------------------------- running

    def _run(self, name: str, reason: str, call: Callable[..., Any], kwargs: dict) -> Any:
        invocation = uuid.uuid4()
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", name, reason, invocation)
        start = time.perf_counter()
        try:
            result = _invoke(call, kwargs)
        except Exception:
            took = (time.perf_counter() - start) * 1000
            log.exception(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms)", name, invocation, took
            )
            raise
        took = (time.perf_counter() - start) * 1000
        log.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)", name, invocation, took
        )
        return result

    def start(self, host: str = "127.0.0.1", port: int = 7071) -> str:
        """Serve HTTP and run the timers in background threads; returns the base URL."""
        self._stop.clear()
        self._server = make_server(host, port, self, threaded=True)
        serve = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._threads = [serve] + [
            threading.Thread(target=self._schedule_loop, args=(name,), name=name, daemon=True)
            for name in self.timers
        ]
        for thread in self._threads:
            thread.start()
        return f"http://{host}:{self._server.server_port}"

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []
