"""GET /api/health, and a dependency that goes away: 503 with Retry-After, never a hang."""

from __future__ import annotations

import time

import httpx

from shared.devhost.servers import EmbeddedServers
from shared.settings import use_settings
from tests.conftest import opportunity


def test_health_reports_every_dependency_up(api: httpx.Client) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "up"
    for name in ("mongodb", "postgres", "redis"):
        assert body["dependencies"][name]["status"] == "up"
        assert body["dependencies"][name]["latency_ms"] >= 0


def test_a_stopped_mongodb_gives_503_then_recovers(settings, host, tmp_path) -> None:
    """A MongoDB server of this test's own is stopped under a running host, then restarted."""
    _, base = host
    client = httpx.Client(base_url=base + "/api", headers={"x-functions-key": "test-function-key"})
    with EmbeddedServers(tmp_path, ["mongodb"]) as own:
        mine = settings.model_copy(
            update={"mongodb_uri": own.urls["mongodb"], "dependency_timeout_ms": 1000}
        )
        use_settings(mine)
        assert client.post("/opportunities", json=opportunity()).status_code == 201
        own.stop()

        started = time.monotonic()
        down = client.post("/opportunities", json=opportunity())
        assert time.monotonic() - started < 10
        assert down.status_code == 503
        assert down.headers["retry-after"] == "5"
        assert down.headers["content-type"].startswith("application/problem+json")
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["dependencies"]["mongodb"]["status"] == "down"
        assert health.json()["dependencies"]["redis"]["status"] == "up"

        own.start()  # same data folder, a new port
        use_settings(mine.model_copy(update={"mongodb_uri": own.urls["mongodb"]}))
        again = client.post("/opportunities", json=opportunity())
        assert again.status_code == 201 and again.json()["opportunity_id"] == "OP-000002"
    use_settings(settings)
