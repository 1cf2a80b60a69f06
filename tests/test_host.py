"""The local host serves what the app registers, nothing else, enforces keys and runs timers."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import azure.functions as func
import httpx
import pytest

from shared import opportunities
from shared.devhost.host import LocalHost, werkzeug_rule
from shared.errors import SettingsError
from shared.http import ROUTE_PARAMETER, registered_functions
from tests.conftest import ADMIN_KEY, FUNCTION_KEY


def test_the_host_serves_exactly_the_registered_http_functions(host) -> None:
    from function_app import app

    local, _ = host
    registered = {
        f.get_function_name(): (
            f.get_trigger().route,
            {str(m.value) for m in f.get_trigger().methods},
        )
        for f in registered_functions(app)
        if f.get_trigger().type == "httpTrigger"
    }
    served = {name: (fn.route, set(fn.methods)) for name, fn in local.http.items()}
    assert served == registered
    rules = {r.rule for r in local.url_map.iter_rules() if r.endpoint != "admin:run"}
    assert rules == {werkzeug_rule(route) for route, _ in registered.values()}
    timers = {
        f.get_function_name()
        for f in registered_functions(app)
        if f.get_trigger().type == "timerTrigger"
    }
    assert set(local.timers) == timers == {"purge_idempotency_keys", "run_etl"}


def test_every_registered_route_answers_over_http_with_its_methods_only(host) -> None:
    local, base = host
    allowed: dict[str, set[str]] = {}
    for fn in local.http.values():
        allowed.setdefault(fn.route, set()).update(fn.methods)
    for route, methods in allowed.items():
        sample = ROUTE_PARAMETER.sub(lambda m: "1" if m.group(3) == "int" else "OP-000001", route)
        url = base + "/api/" + sample
        for method in ("GET", "POST", "PATCH", "PUT", "DELETE"):
            response = httpx.request(
                method, url, headers={"x-functions-key": FUNCTION_KEY}, json={}
            )
            served = response.status_code != 405 and "No function serves" not in response.text
            assert served == (method in methods), (method, route, response.status_code)


def test_unregistered_paths_are_404(host) -> None:
    _, base = host
    for path in ("/api/nothing", "/api/opportunities/OP-1/extra", "/opportunities", "/"):
        response = httpx.get(base + path, headers={"x-functions-key": FUNCTION_KEY})
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"


def test_auth_levels(host) -> None:
    _, base = host
    assert httpx.get(f"{base}/api/health").status_code in (200, 503)  # anonymous
    assert httpx.get(f"{base}/api/catalogs").status_code == 401
    assert (
        httpx.get(f"{base}/api/catalogs", headers={"x-functions-key": FUNCTION_KEY}).status_code
        == 200
    )
    assert httpx.get(f"{base}/api/catalogs", params={"code": ADMIN_KEY}).status_code == 200
    run = f"{base}/admin/functions/purge_idempotency_keys"
    assert httpx.post(run, headers={"x-functions-key": FUNCTION_KEY}).status_code == 401
    assert httpx.post(run, headers={"x-functions-key": ADMIN_KEY}).status_code == 202
    assert (
        httpx.post(
            f"{base}/admin/functions/nope", headers={"x-functions-key": ADMIN_KEY}
        ).status_code
        == 404
    )


@pytest.mark.parametrize(
    ("route", "rule"),
    [
        ("opportunities", "/api/opportunities"),
        ("opportunities/{id}", "/api/opportunities/<id>"),
        ("items/{n:int}/x", "/api/items/<int:n>/x"),
        ("files/{*path}", "/api/files/<path:path>"),
    ],
)
def test_route_templates(route: str, rule: str) -> None:
    assert werkzeug_rule(route) == rule


def test_unsupported_route_templates_are_refused_clearly() -> None:
    with pytest.raises(SettingsError, match="optional"):
        werkzeug_rule("items/{id?}")
    with pytest.raises(SettingsError, match="constraint"):
        werkzeug_rule("items/{id:regex}")


def _app_with(**triggers) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    for name, (schedule, target) in triggers.items():
        app.timer_trigger(schedule=schedule, arg_name="timer")(_named(name, target))
    return app


def _named(name, target):
    def timer(timer: func.TimerRequest) -> None:
        target(timer)

    timer.__name__ = name
    return timer


def test_a_timer_fires_on_its_schedule_with_settings_substituted(settings) -> None:
    fired = threading.Event()
    requests = []
    app = _app_with(
        tick=("%IDEMPOTENCY_PURGE_SCHEDULE%", lambda t: (requests.append(t), fired.set()))
    )
    every_second = settings.model_copy(update={"idempotency_purge_schedule": "* * * * * *"})
    local = LocalHost(app, every_second)
    assert local.timers["tick"].schedule == "* * * * * *"
    local.start("127.0.0.1", 0)
    try:
        assert fired.wait(5), "the timer did not fire within 5 s"
    finally:
        local.stop()
    assert isinstance(requests[0], func.TimerRequest)


def test_bad_schedules_are_refused_with_the_setting_named(settings) -> None:
    with pytest.raises(SettingsError, match="six-field"):
        LocalHost(_app_with(tick=("0 */5 * * *", print)), settings)
    with pytest.raises(SettingsError, match="NO_SUCH_SETTING"):
        LocalHost(_app_with(tick=("%NO_SUCH_SETTING%", print)), settings)


def test_next_fire_follows_ncrontab_seconds_first(settings) -> None:
    local = LocalHost(_app_with(tick=("0 */5 * * * *", print)), settings)
    from datetime import UTC, datetime

    start = datetime(2026, 1, 1, 10, 2, 30, tzinfo=UTC)
    assert local.next_fire("tick", start) == datetime(2026, 1, 1, 10, 5, 0, tzinfo=UTC)


def test_the_purge_timer_deletes_only_expired_idempotency_keys(host, api, db, caplog) -> None:
    api.post("/opportunities", json=_body(), headers={"Idempotency-Key": "old"})
    api.post("/opportunities", json=_body(acv=1.0), headers={"Idempotency-Key": "new"})
    db.idempotency_keys.replace_one(
        {"_id": "old"},
        {
            **db.idempotency_keys.find_one({"_id": "old"}),
            "created_at": opportunities.now_utc() - timedelta(hours=25),
        },
    )
    local, _ = host
    with caplog.at_level(logging.INFO, logger="salespredict.host"):
        local.run_timer("purge_idempotency_keys")
    assert [k["_id"] for k in db.idempotency_keys.find()] == ["new"]
    assert any(
        "Executed 'Functions.purge_idempotency_keys' (Succeeded" in m for m in caplog.messages
    )


def test_a_failing_function_is_a_500_problem_and_logged(settings, caplog) -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="boom")
    def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("secret detail")

    local = LocalHost(app, settings)
    base = local.start("127.0.0.1", 0)
    try:
        with caplog.at_level(logging.INFO, logger="salespredict.host"):
            response = httpx.get(f"{base}/api/boom")
    finally:
        local.stop()
    assert response.status_code == 500 and "secret detail" not in response.text
    assert any("(Failed" in m for m in caplog.messages)


def _body(**overrides):
    from tests.conftest import opportunity

    return opportunity(**overrides)
