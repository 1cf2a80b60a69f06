"""Fixtures: real servers (embedded by default, or the ones given by URL), one database per test,
and the local host serving the real FunctionApp on a free port.

Give ``MONGODB_URI``, ``POSTGRES_DSN`` or ``REDIS_URL`` in the environment to run against those
servers; whatever is not given is started embedded, once per test session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg2
import pytest

from shared.devhost.host import LocalHost
from shared.devhost.servers import EmbeddedServers, missing_servers, with_urls
from shared.settings import Settings, load_settings, use_settings
from shared.stores import mongo

FUNCTION_KEY = "test-function-key"
ADMIN_KEY = "test-admin-key"
SEED_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed-opportunities.csv"
SEED_MAPPING = Path(__file__).resolve().parents[1] / "imports" / "seed-opportunities.toml"


def _base_environment() -> dict[str, str]:
    """Only the server URLs come from the outside; nothing from a developer's local settings."""
    names = ("MONGODB_URI", "POSTGRES_DSN", "REDIS_URL")
    return {name: os.environ[name] for name in names if os.environ.get(name)}


@pytest.fixture(scope="session")
def server_settings() -> Iterator[Settings]:
    """Settings pointing at real servers for the whole session.

    Their data lives outside pytest's temporary folder: another pytest session resets that
    folder to mode 0700, which would lock the embedded PostgreSQL (its own system user) out.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="salespredict-test-"))
    base = load_settings(
        {
            **_base_environment(),
            "SALESPREDICT_DATA_DIR": str(data_dir),
            "SALESPREDICT_FUNCTION_KEY": FUNCTION_KEY,
            "SALESPREDICT_ADMIN_KEY": ADMIN_KEY,
            "DEPENDENCY_TIMEOUT_MS": "3000",
        },
        local_settings=data_dir / "none.json",
    )
    try:
        missing = missing_servers(base)
        if not missing:
            yield base
        else:
            with EmbeddedServers(data_dir, missing) as servers:
                yield with_urls(base, servers.urls)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def settings(server_settings: Settings) -> Iterator[Settings]:
    """The session's servers with a MongoDB database of this test's own, dropped afterwards."""
    mine = server_settings.model_copy(update={"mongodb_database": f"t_{uuid.uuid4().hex[:12]}"})
    use_settings(mine)
    yield mine
    mongo.client().drop_database(mine.mongodb_database)
    use_settings(server_settings)


def cli_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for a ``salespredict`` command talking to ``settings``' servers."""
    return {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "MONGODB_URI": settings.mongodb_uri,
        "MONGODB_DATABASE": settings.mongodb_database,
        "POSTGRES_DSN": settings.postgres_dsn,
        "REDIS_URL": settings.redis_url,
        **extra,
    }


def database_dsn(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` of the same server."""
    return urlsplit(dsn)._replace(path=f"/{name}").geturl()


@pytest.fixture
def pg(settings: Settings, server_settings: Settings) -> Iterator[Settings]:
    """``settings`` with a PostgreSQL database of this test's own, dropped afterwards."""
    name = settings.mongodb_database
    admin = psycopg2.connect(server_settings.postgres_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    mine = settings.model_copy(update={"postgres_dsn": database_dsn(settings.postgres_dsn, name)})
    use_settings(mine)
    yield mine
    use_settings(settings)
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def db(settings: Settings):
    from shared.opportunities import collections

    return collections().db


@pytest.fixture
def host(settings: Settings) -> Iterator[tuple[LocalHost, str]]:
    from function_app import app

    local = LocalHost(app, settings)
    base = local.start("127.0.0.1", 0)
    yield local, base
    local.stop()


@pytest.fixture
def api(host: tuple[LocalHost, str]) -> Iterator[httpx.Client]:
    """An HTTP client for the local host's /api, sending the function key."""
    with httpx.Client(
        base_url=host[1] + "/api", headers={"x-functions-key": FUNCTION_KEY}, timeout=30
    ) as client:
        yield client


def opportunity(**overrides: object) -> dict[str, object]:
    """A valid capture body."""
    body: dict[str, object] = {
        "client_code": "CL-01169",
        "business_unit": "BU-05",
        "opportunity_type": "TY-04",
        "acv": 476458.92,
        "tcv": 943194.18,
        "margin": 0.06,
        "region": "RE-02",
        "territory": "TE-15",
        "industry": "IN-23",
        "lead_source": "LS-06",
        "seller_id": "NV-4",
        "expected_close_date": "2027-02-06",
        "notes": "Met the CFO; second call next week.",
        "attributes": {"competitor": "Acme", "contacts": [{"name": "Ana", "role": "CFO"}]},
    }
    body.update(overrides)
    return body
