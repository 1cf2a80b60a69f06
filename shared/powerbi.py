"""Power BI: a ``.pbids`` connection file for the configured PostgreSQL server and database."""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import urlsplit

from shared.errors import SettingsError

Mode = Literal["Import", "DirectQuery"]


def connection_file(dsn: str, mode: Mode = "Import") -> dict[str, Any]:
    """The content of a .pbids file opening ``dsn``'s database in Power BI Desktop.

    It names the server and database only: Power BI asks for the credentials (use a login in
    the ``salespredict_reader`` role) and shows the ``reporting`` views to pick.
    """
    parts = urlsplit(dsn)
    database = parts.path.lstrip("/")
    if not parts.hostname or not database:
        raise SettingsError("POSTGRES_DSN must name a host and a database for a .pbids file.")
    server = parts.hostname if parts.port in (None, 5432) else f"{parts.hostname}:{parts.port}"
    return {
        "version": "0.1",
        "connections": [
            {
                "details": {
                    "protocol": "postgresql",
                    "address": {"server": server, "database": database},
                },
                "options": {},
                "mode": mode,
            }
        ],
    }


def dumps(dsn: str, mode: Mode = "Import") -> str:
    return json.dumps(connection_file(dsn, mode), indent=2) + "\n"
