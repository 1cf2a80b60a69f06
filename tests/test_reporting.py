"""The reporting database Power BI reads: migrations, views with hand-computed figures, the
read-only role and the .pbids connection file."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal

import psycopg2
import pytest

from shared import opportunities, powerbi
from shared.errors import SettingsError
from shared.etl import migrate as migrations
from shared.etl import pipeline
from shared.stores import postgres
from tests.conftest import cli_environment, opportunity
from tests.test_etl import query

# region, acv, final stage (S* stays open)
DEALS = [
    ("RE-00", 100.0, "Won"), ("RE-00", 200.0, "Won"), ("RE-00", 300.0, "Lost"),
    ("RE-01", 50.0, "Lost"), ("RE-01", 60.0, "Lost"), ("RE-01", 70.0, "S2"),
    ("RE-02", 10.0, "S2"), ("RE-02", 20.0, "S3"),
]  # fmt: skip


@pytest.fixture
def deals(pg) -> None:
    for region, acv, stage in DEALS:
        body = json.dumps(opportunity(region=region, acv=acv, tcv=acv * 2))
        created = opportunities.create(opportunities.parse(opportunities.NewOpportunity, body))
        opp_id = created.opportunity["opportunity_id"]
        if stage != "S1":
            reason = {"lost_reason": "price"} if stage == "Lost" else {}
            patch = opportunities.OpportunityPatch(stage=stage, **reason)
            opportunities.update(opp_id, patch, None)
    opportunities.delete(
        opportunities.create(
            opportunities.parse(
                opportunities.NewOpportunity, json.dumps(opportunity(region="RE-00"))
            )
        ).opportunity["opportunity_id"],
        None,
    )  # a deleted deal counts nowhere
    assert pipeline.run().status == "succeeded"


def test_win_rate_by_region(deals) -> None:
    rows = query('SELECT * FROM reporting."Win Rate by Region" ORDER BY 1')
    assert rows == [
        ("RE-00", 2, 1, Decimal("0.6667")),
        ("RE-01", 0, 2, Decimal("0.0000")),
        ("RE-02", 0, 0, None),
    ]


def test_pipeline_by_stage_counts_open_deals_only(deals) -> None:
    rows = query('SELECT * FROM reporting."Pipeline by Stage" ORDER BY 1')
    assert rows == [
        ("S2", 2, Decimal("80.00"), Decimal("160.00")),
        ("S3", 1, Decimal("20.00"), Decimal("40.00")),
    ]


def test_opportunities_and_stage_changes(deals) -> None:
    assert query('SELECT count(*) FROM reporting."Opportunities"') == [(8,)]
    won = query('SELECT "Is Won", "Is Closed", "Cycle Days" FROM reporting."Opportunities" '
                "WHERE \"Stage\" = 'Won'")  # fmt: skip
    assert won == [(True, True, 0), (True, True, 0)]
    changes = query('SELECT "From Stage", "To Stage", count(*) FROM reporting."Stage Changes" '
                    "GROUP BY 1, 2 ORDER BY 1 NULLS FIRST, 2")  # fmt: skip
    assert changes == [(None, "S1", 8), ("S1", "Lost", 3), ("S1", "S2", 2), ("S1", "S3", 1),
                       ("S1", "Won", 2)]  # fmt: skip
    calendar = query('SELECT min("Year"), max("Year"), count(*) FROM reporting."Calendar"')
    years = calendar[0][1] - calendar[0][0] + 1
    assert calendar[0][2] in (365 * years, 365 * years + 1, 365 * years + 2)  # full years
    assert query('SELECT "Region" FROM reporting."Regions" ORDER BY 1') == [
        ("RE-00",), ("RE-01",), ("RE-02",)
    ]  # fmt: skip


def test_the_read_only_role_reads_reporting_and_nothing_else(deals) -> None:
    with postgres.connection() as conn, conn.cursor() as cur:
        cur.execute("SET ROLE salespredict_reader")
        cur.execute('SELECT count(*) FROM reporting."Opportunities"')
        assert cur.fetchone() == (8,)
        for view in ("Predictions", "Models"):  # the model's views too
            cur.execute(f'SELECT count(*) FROM reporting."{view}"')
        for statement in (
            "SELECT * FROM public.fact_opportunity",
            "SELECT artifact FROM public.model_version",
            "SELECT * FROM public.etl_run",
            'DELETE FROM reporting."Opportunities"',
            "CREATE TABLE reporting.mine (x int)",
            "CREATE TABLE public.mine (x int)",
        ):
            cur.execute("SAVEPOINT attempt")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
            cur.execute("ROLLBACK TO SAVEPOINT attempt")
        conn.rollback()


def test_migrations_apply_once_and_refuse_a_database_ahead_or_edited(pg) -> None:
    with postgres.connection() as conn:
        first = migrations.migrate(conn)
        assert [m.version for m in first] == [m.version for m in migrations.available()]
        assert migrations.migrate(conn) == []
        with conn.cursor() as cur:
            cur.execute("INSERT INTO schema_migration VALUES (9999, 'future', 'x')")
        conn.commit()
        with pytest.raises(migrations.MigrationError, match=r"9999.*newer version"):
            migrations.migrate(conn)
        with conn.cursor() as cur:
            cur.execute("DELETE FROM schema_migration WHERE version = 9999")
            cur.execute("UPDATE schema_migration SET checksum = 'edited' WHERE version = 1")
        conn.commit()
        with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
            migrations.migrate(conn)
    with pytest.raises(migrations.MigrationError):
        pipeline.run()  # the ETL refuses to run against it too


def test_the_pbids_file_names_the_server_and_database() -> None:
    content = powerbi.connection_file(
        "postgresql://reader@db.example.com:6432/sales", "DirectQuery"
    )
    connection = content["connections"][0]
    assert connection["details"] == {
        "protocol": "postgresql",
        "address": {"server": "db.example.com:6432", "database": "sales"},
    }
    assert connection["mode"] == "DirectQuery"
    default_port = powerbi.connection_file("postgresql://u@host/db")["connections"][0]
    assert default_port["details"]["address"]["server"] == "host"
    with pytest.raises(SettingsError):
        powerbi.connection_file("postgresql:///nodb")


def test_the_cli_migrates_loads_rebuilds_and_writes_a_pbids_file(pg, tmp_path) -> None:
    opportunities.create(
        opportunities.parse(opportunities.NewOpportunity, json.dumps(opportunity()))
    )
    env = cli_environment(pg)

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "shared.cli", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "Applied 0001_star_schema, 0002_reporting, 0003_source_changes, 0004_models." in cli(
        "migrate"
    )
    assert "up to date" in cli("migrate")
    assert "succeeded: 2 read, 2 upserted, 0 rejected" in cli("etl")  # one opportunity, one move
    assert "succeeded" in cli("etl", "--full")
    assert query('SELECT count(*) FROM reporting."Opportunities"') == [(1,)]
    cli("powerbi", "--out", "sales.pbids", "--mode", "DirectQuery")
    pbids = json.loads((tmp_path / "sales.pbids").read_text())
    assert pbids["connections"][0]["details"]["address"]["database"] == pg.mongodb_database
    assert pbids["connections"][0]["mode"] == "DirectQuery"
