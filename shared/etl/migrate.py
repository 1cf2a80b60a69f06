"""Versioned SQL migrations: ``migrations/NNNN_name.sql``, applied in order, once each.

Each applied migration is recorded in ``schema_migration`` with its checksum. A migration edited
after it was applied, or a database that has migrations this code does not know (it is ahead of
the code), is refused with a message saying what to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from psycopg2.extensions import connection as Connection

from shared.errors import SalesPredictError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_KEY = 0x5A1E_5001  # pg_advisory_xact_lock key shared by every migrating process
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(SalesPredictError):
    """The database's migrations do not match this code's."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migrations shipped with this code, in order."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text("utf-8")))
    return found


def migrate(conn: Connection) -> list[Migration]:
    """Apply the pending migrations, each in its own transaction; returns those applied."""
    applied_now = []
    for migration in available():
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                cur.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migration (
                           version integer PRIMARY KEY, name text NOT NULL,
                           checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                cur.execute("SELECT version, name, checksum FROM schema_migration")
                applied = {version: (name, checksum) for version, name, checksum in cur}
                _check(applied)
                if migration.version not in applied:
                    log.info("Applying migration %04d_%s", migration.version, migration.name)
                    cur.execute(migration.sql)
                    cur.execute(
                        "INSERT INTO schema_migration (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                    applied_now.append(migration)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return applied_now


def _check(applied: dict[int, tuple[str, str]]) -> None:
    known = {m.version: m for m in available()}
    ahead = sorted(v for v in applied if v not in known)
    if ahead:
        raise MigrationError(
            f"The database has migration(s) {', '.join(f'{v:04d}' for v in ahead)} that this "
            "code does not know: it was migrated by a newer version. Deploy that version."
        )
    for version, (name, checksum) in applied.items():
        if known[version].checksum != checksum:
            raise MigrationError(
                f"Migration {version:04d}_{name} changed after it was applied; add a new "
                "migration instead of editing an applied one."
            )
