"""`salespredict serve` as a newcomer runs it: embedded servers, keys, Ctrl-C, nothing left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pymongo

from shared.devhost.servers import free_port
from tests.conftest import opportunity

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(url: str, timeout: float = 90) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def test_serve_starts_embedded_servers_and_stops_them_on_ctrl_c(tmp_path: Path) -> None:
    shutil.copy(ROOT / "local.settings.example.json", tmp_path)
    env = {
        k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "POSTGRES_DSN", "REDIS_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    env["DEMO_OPPORTUNITIES"] = "500"  # a small demo history: enough for a trained model
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        health = _wait_for(f"http://127.0.0.1:{port}/api/health")
        assert health.status_code == 200, health.text
        values = json.loads((tmp_path / "local.settings.json").read_text())["Values"]
        key = values["SALESPREDICT_FUNCTION_KEY"]
        assert len(key) >= 24
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{port}/api", headers={"x-functions-key": key}
        )
        model = api.get("/model").json()  # trained at once on the demo history
        assert model["is_prior"] is False and model["version"] == 1
        assert model["metrics"]["roc_auc"] > 0.5
        created = api.post("/opportunities", json=opportunity())
        assert created.status_code == 201
        body = created.json()
        assert body.pop("prediction")["model_version"] == 1
        assert api.get(created.headers["location"].removeprefix("/api")).json() == body

        state = json.loads((tmp_path / ".salespredict" / "servers.json").read_text())
        pids = [s["pid"] for s in state["servers"].values()]
        assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)

        # another command attaches to the running servers instead of starting its own
        attached = subprocess.run(
            [sys.executable, "-m", "shared.cli", "catalog", "add", "region", "RE-09"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert attached.returncode == 0, attached.stderr
        assert "Starting embedded" not in attached.stderr
        mongo_url = state["servers"]["mongodb"]["url"]
        with pymongo.MongoClient(mongo_url) as client:  # (the app's copy refreshes within 30 s)
            assert "RE-09" in client.salespredict.catalogs.find_one({"_id": "region"})["codes"]
    finally:
        serve.send_signal(signal.SIGINT)
        output, _ = serve.communicate(timeout=60)
    assert serve.returncode == 0, output
    assert "Function key:" in output and f"http://127.0.0.1:{port}/api/" in output
    deadline = time.monotonic() + 10
    while any(
        psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids
    ):
        assert time.monotonic() < deadline, "an embedded server outlived serve"
        time.sleep(0.2)
    assert not (tmp_path / ".salespredict" / "servers.json").exists()


def test_data_survives_a_restart(tmp_path: Path) -> None:
    shutil.copy(ROOT / "local.settings.example.json", tmp_path)
    env = {
        k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "POSTGRES_DSN", "REDIS_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "shared.cli", "catalog", "add", "industry", "IN-99"]
    first = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "shared.cli", "catalog", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "IN-99" in listing.stdout
