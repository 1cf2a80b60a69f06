"""The ETL against real MongoDB-protocol and PostgreSQL servers: exactly-once in effect through
crashes, kills and outages; idempotent; rebuildable; guarded against stale versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import psycopg2
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared import opportunities
from shared.devhost.servers import EmbeddedServers
from shared.etl import pipeline, transform
from shared.etl.pipeline import RUN_LOCK_KEY
from shared.settings import use_settings
from shared.stores import postgres
from tests.conftest import cli_environment, opportunity

FACTS = ("fact_opportunity", "fact_stage_change", *sorted(transform.DIMENSIONS), "dim_date")
ROOT = Path(__file__).resolve().parents[1]


def capture(n: int, **overrides) -> list[str]:
    ids = []
    for i in range(n):
        body = json.dumps(opportunity(region=f"RE-0{i % 4}", **overrides))
        ids.append(opportunities.create(opportunities.parse(opportunities.NewOpportunity, body))
                   .opportunity["opportunity_id"])  # fmt: skip
    return ids


def change(opp_id: str, **fields) -> None:
    opportunities.update(opp_id, opportunities.OpportunityPatch(**fields), None)


def snapshot() -> dict[str, list[tuple]]:
    """Every row of every fact and dimension table, in a stable order."""
    with postgres.connection() as conn, conn.cursor() as cur:
        tables = {}
        for table in FACTS:
            cur.execute(f"SELECT * FROM {table} ORDER BY 1")
            tables[table] = cur.fetchall()
        return tables


def query(sql: str, params: tuple = ()) -> list[tuple]:
    with postgres.connection() as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def watermarks() -> dict[str, tuple]:
    return {s: (ts, i) for s, ts, i in query("SELECT stream, last_ts, last_id FROM etl_watermark")}


def assert_equals_a_full_rebuild() -> None:
    incremental = snapshot()
    assert pipeline.run(full=True).status == "succeeded"
    assert snapshot() == incremental
    cols = opportunities.collections()
    ids = [d["_id"] for d in cols.opportunities.find({}, {"_id": 1})]
    loaded = [row[0] for row in incremental["fact_opportunity"]]
    assert sorted(loaded) == sorted(ids) and len(set(loaded)) == len(loaded)
    moves = ("captured", "imported", "stage_changed", "closed")
    events = [e["_id"] for e in cols.events.find({"type": {"$in": moves}}, {"_id": 1})]
    assert sorted(row[0] for row in incremental["fact_stage_change"]) == sorted(events)


def test_a_capture_reaches_the_reporting_views_in_one_timer_run(pg, api, host) -> None:
    created = api.post("/opportunities", json=opportunity(region="RE-03")).json()
    local, _ = host
    local.run_timer("run_etl")
    rows = query('SELECT "Opportunity", "Region", "Stage", "ACV" FROM reporting."Opportunities"')
    assert rows == [(created["opportunity_id"], "RE-03", "S1", Decimal("476458.92"))]
    assert query('SELECT "To Stage" FROM reporting."Stage Changes"') == [("S1",)]


def test_running_twice_changes_nothing(pg, db) -> None:
    capture(5)
    change("OP-000002", stage="Won")
    first = pipeline.run()
    assert (first.status, first.upserted, first.rejected) == ("succeeded", 5 + 6, 0)
    tables, marks = snapshot(), watermarks()
    second = pipeline.run()
    assert second.upserted == 0 and snapshot() == tables and watermarks() == marks
    assert second.unchanged and second.read == 0  # nothing was written: nothing is read
    change("OP-000003", notes="called back")
    third = pipeline.run()
    assert not third.unchanged and third.upserted == 1
    assert query("SELECT status, count(*) FROM etl_run GROUP BY 1") == [("succeeded", 3)]


def test_incremental_runs_equal_a_full_rebuild(pg, db) -> None:
    capture(4)
    pipeline.run()
    change("OP-000001", stage="S3")
    change("OP-000003", stage="Lost", lost_reason="price")
    capture(2)
    pipeline.run()
    opportunities.delete("OP-000002", None)
    change("OP-000003", stage="S2")
    pipeline.run()
    deleted = query("SELECT is_deleted FROM fact_opportunity WHERE opportunity_id = 'OP-000002'")
    assert deleted == [(True,)]
    stages = query("SELECT from_stage, to_stage FROM fact_stage_change WHERE opportunity_id = "
                   "'OP-000003' ORDER BY version")  # fmt: skip
    assert stages == [(None, "S1"), ("S1", "Lost"), ("Lost", "S2")]
    assert_equals_a_full_rebuild()


def test_a_crash_after_batch_k_loses_nothing_and_duplicates_nothing(pg, db) -> None:
    use_settings(pg.model_copy(update={"etl_batch_size": 3}))
    capture(10)
    batches = []

    def crash_after_second_batch(stream: str, size: int) -> None:
        batches.append((stream, size))
        if len(batches) == 2:
            raise RuntimeError("injected crash")

    with pytest.raises(RuntimeError, match="injected crash"):
        pipeline.run(on_batch=crash_after_second_batch)
    marks = watermarks()
    assert query("SELECT count(*) FROM fact_opportunity") == [(6,)]
    assert query("SELECT status, error FROM etl_run") == [
        ("failed", "RuntimeError: injected crash")
    ]
    capture(2)
    assert pipeline.run().status == "succeeded"
    assert watermarks()["opportunities"] > marks["opportunities"]
    assert query("SELECT count(*) FROM fact_opportunity") == [(12,)]
    assert_equals_a_full_rebuild()


def test_a_killed_run_is_finished_by_the_next(pg, db) -> None:
    capture(60)
    env = cli_environment(pg, ETL_BATCH_SIZE="1")
    process = subprocess.Popen([sys.executable, "-m", "shared.cli", "etl"], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not query("SELECT 1 FROM pg_tables WHERE tablename = 'etl_run'") or not query(
            "SELECT 1 FROM etl_run WHERE read >= 5"
        ):
            assert time.monotonic() < deadline, "the ETL run made no progress"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
    loaded = query("SELECT count(*) FROM fact_opportunity")[0][0]
    assert 5 <= loaded < 60
    marks = watermarks()
    result = pipeline.run()
    assert watermarks()["opportunities"] > marks["opportunities"]
    assert result.status == "succeeded"
    assert query("SELECT status, error FROM etl_run ORDER BY run_id")[0] == (
        "failed",
        "abandoned: the process running it stopped",
    )
    assert_equals_a_full_rebuild()


def test_a_poison_document_is_rejected_and_its_batch_commits(pg, db) -> None:
    capture(3)
    good = db.opportunities.find_one({"_id": "OP-000002"})
    db.opportunities.insert_one({**good, "_id": "OP-900001", "seq": 900001, "acv": "lots"})
    db.opportunities.insert_one({**good, "_id": "OP-900002", "seq": 900002, "notes": "a\x00b"})
    result = pipeline.run()
    assert (result.status, result.rejected) == ("succeeded", 2)
    assert query("SELECT count(*) FROM fact_opportunity") == [(3,)]
    rejects = dict(query("SELECT document_id, reason FROM etl_reject ORDER BY 1"))
    assert "acv" in rejects["OP-900001"] and "NUL" in rejects["OP-900002"]
    pipeline.run()
    assert query("SELECT count(*) FROM etl_reject") == [(2,)]


def test_an_older_version_never_overwrites_a_newer_one(pg, db) -> None:
    capture(1)
    change("OP-000001", stage="S4")
    pipeline.run()
    newer = db.opportunities.find_one({"_id": "OP-000001"})
    older = {**newer, "version": 1, "stage": "S1"}
    stream = pipeline.STREAMS[0]
    with postgres.connection() as conn, conn.cursor() as cur:
        upserted = pipeline._upsert(cur, stream, [transform.opportunity_row(older)])
    assert upserted == 0
    assert query("SELECT stage, version FROM fact_opportunity") == [("S4", 2)]


def test_a_batch_keeps_one_document_per_id_the_newest() -> None:
    docs = [{"_id": "A", "version": 1}, {"_id": "B", "version": 4}, {"_id": "A", "version": 3},
            {"_id": "A", "version": 2}]  # fmt: skip
    latest = pipeline._latest_versions(docs)
    assert sorted((d["_id"], d["version"]) for d in latest) == [("A", 3), ("B", 4)]


def test_a_late_write_with_an_older_timestamp_is_not_missed(pg, db) -> None:
    capture(2)
    pipeline.run()
    late = db.opportunities.find_one({"_id": "OP-000001"})
    late_time = late["updated_at"] - timedelta(seconds=10)  # inside the lag window
    db.opportunities.replace_one(
        {"_id": "OP-000001"}, {**late, "stage": "S5", "version": 2, "updated_at": late_time}
    )
    opportunities.count_changes(opportunities.collections())  # as the app counts every write
    pipeline.run()
    assert query("SELECT stage FROM fact_opportunity WHERE opportunity_id = 'OP-000001'") == [
        ("S5",)
    ]


def test_a_second_run_exits_at_once_while_one_holds_the_lock(pg) -> None:
    capture(1)
    holder = psycopg2.connect(pg.postgres_dsn)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (RUN_LOCK_KEY,))
        started = time.monotonic()
        result = pipeline.run()
        assert result.status == "skipped" and time.monotonic() - started < 5
        assert "in progress" in result.summary()
    finally:
        holder.close()
    assert pipeline.run().status == "succeeded"


def test_mongodb_down_fails_cleanly_with_the_watermark_unchanged(pg, tmp_path) -> None:
    capture(2)
    pipeline.run()
    marks = watermarks()
    with EmbeddedServers(tmp_path, ["mongodb"]) as gone:
        url = gone.urls["mongodb"]
    use_settings(pg.model_copy(update={"mongodb_uri": url, "dependency_timeout_ms": 500}))
    with pytest.raises(Exception, match=r"(?i)timeout|refused|connect"):
        pipeline.run()
    use_settings(pg)
    assert watermarks() == marks
    assert query("SELECT status FROM etl_run ORDER BY run_id") == [("succeeded",), ("failed",)]


def test_postgres_stopped_between_batches_fails_the_run_and_the_next_completes(
    settings, db, tmp_path
):
    use_settings(settings)
    capture(9)
    with EmbeddedServers(tmp_path, ["postgres"]) as own:
        mine = settings.model_copy(
            update={"postgres_dsn": own.urls["postgres"], "etl_batch_size": 3}
        )
        use_settings(mine)

        def stop_postgres_after_first_batch(stream: str, size: int) -> None:
            if own.running:
                own.stop()

        with pytest.raises(psycopg2.Error):
            pipeline.run(on_batch=stop_postgres_after_first_batch)
        own.start()
        use_settings(mine.model_copy(update={"postgres_dsn": own.urls["postgres"]}))
        assert query("SELECT count(*) FROM fact_opportunity") == [(3,)]
        assert pipeline.run().status == "succeeded"
        assert query("SELECT count(*) FROM fact_opportunity") == [(9,)]
        assert_equals_a_full_rebuild()
    use_settings(settings)


def test_a_row_postgresql_refuses_is_rejected_alone(pg, db) -> None:
    capture(2)
    good = db.opportunities.find_one({"_id": "OP-000001"})
    huge_id = "OP-" + os.urandom(6000).hex()  # past what a btree index entry can hold
    db.opportunities.insert_one({**good, "_id": huge_id, "seq": 777})
    result = pipeline.run()
    assert result.status == "succeeded"
    assert query("SELECT count(*) FROM fact_opportunity") == [(2,)]
    rejects = query("SELECT stream, document_id, reason FROM etl_reject ORDER BY stream")
    assert [stream for stream, _, _ in rejects] == ["events", "opportunities"]  # and its event
    for _, document_id, reason in rejects:
        assert huge_id.startswith(document_id.split(":")[0][:400])
        assert reason.startswith("PostgreSQL refused it")


def test_an_event_lost_to_a_crash_is_appended_and_loaded_in_the_same_run(pg, db) -> None:
    capture(1)
    change("OP-000001", stage="S3")
    db.events.delete_one({"_id": "OP-000001:2"})  # as if the process died after the document
    pipeline.run()
    assert db.events.count_documents({"_id": "OP-000001:2"}) == 1
    assert query("SELECT from_stage, to_stage FROM fact_stage_change ORDER BY version") == [
        (None, "S1"),
        ("S1", "S3"),
    ]
    assert_equals_a_full_rebuild()


def test_a_failed_full_rebuild_leaves_the_tables_as_they_were(pg, db) -> None:
    capture(4)
    pipeline.run()
    before = snapshot()

    def crash(stream: str, size: int) -> None:
        raise RuntimeError("injected crash")

    with pytest.raises(RuntimeError):
        pipeline.run(full=True, on_batch=crash)
    assert snapshot() == before


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("capture"), st.integers(0, 3)),
        st.tuples(st.just("stage"), st.integers(0, 20), st.sampled_from(["S2", "S5", "Won"])),
        st.tuples(st.just("delete"), st.integers(0, 20)),
        st.tuples(st.just("etl")),
    ),
    max_size=12,
)


@hypothesis_settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(OPERATIONS)
def test_property_runs_are_idempotent_and_equal_a_rebuild(pg, db, operations) -> None:
    """Whatever was written, in whatever order with runs in between: a second run changes
    nothing, and a full rebuild equals the incremental tables."""
    for operation in operations:
        live = [d["_id"] for d in db.opportunities.find({"deleted_at": None}, {"_id": 1})]
        if operation[0] == "capture":
            capture(1, territory=f"TE-0{operation[1]}")
        elif operation[0] == "stage" and live:
            change(live[operation[1] % len(live)], stage=operation[2])
        elif operation[0] == "delete" and live:
            opportunities.delete(live[operation[1] % len(live)], None)
        elif operation[0] == "etl":
            pipeline.run()
    pipeline.run()
    tables = snapshot()
    assert pipeline.run().upserted == 0
    assert snapshot() == tables
    assert_equals_a_full_rebuild()
