"""The servers a benchmark runs against: those given by URL, else embedded ones."""

from __future__ import annotations

import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
from pymongo import MongoClient

from shared.devhost.servers import EmbeddedServers, missing_servers, with_urls
from shared.settings import Settings, load_settings


def bench_settings(stack: ExitStack, needed: set[str]) -> Settings:
    """Settings from the environment; each ``needed`` server without a URL is started embedded
    in a temporary folder, for as long as ``stack`` lasts."""
    settings = load_settings(local_settings=Path("/nonexistent"))
    missing = [name for name in missing_servers(settings) if name in needed]
    if missing:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        servers = stack.enter_context(EmbeddedServers(data, missing))
        settings = with_urls(settings, servers.urls)
    return settings


def own_database(stack: ExitStack, settings: Settings) -> Settings:
    """``settings`` with a MongoDB and a PostgreSQL database of the benchmark's own, dropped
    when ``stack`` closes."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(settings.postgres_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()
        with MongoClient(settings.mongodb_uri) as client:
            client.drop_database(name)

    stack.callback(drop)
    dsn = urlsplit(settings.postgres_dsn)._replace(path=f"/{name}").geturl()
    return settings.model_copy(update={"mongodb_database": name, "postgres_dsn": dsn})
