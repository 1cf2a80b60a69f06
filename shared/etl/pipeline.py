"""The ETL run: MongoDB -> PostgreSQL, incremental, exactly-once in effect.

For each stream (opportunities by ``updated_at``, events by ``recorded_at``):

1. read documents from the watermark ``(ts, _id)`` minus a lag window (``ETL_LAG_SECONDS``), so a
   write that lands late with an older timestamp is not missed, in ``(ts, _id)`` order;
2. per batch: transform (a bad document goes to ``etl_reject``), de-duplicate by key, COPY into a
   staging table and upsert, where an older ``version`` never overwrites a newer one;
3. commit the rows, the rejects, the run's counters and the new watermark in one transaction.

Writers count their writes in MongoDB once done (``opportunities.count_changes``); a run that
finds the count where the last run that read left it, less than an hour ago, reads nothing (a
cheap no-op run even where the server cannot use the ``updated_at`` index for a range, as
nx-27017 cannot; the hourly read catches a write whose count was lost to a crash).

A crash loses at most the batch in flight, and the next run reloads it. Two runs never overlap
(a PostgreSQL advisory lock); ``full`` empties the facts and the watermarks first and then runs
the same code, so a rebuild yields what the incremental runs built, in one transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from shared import opportunities
from shared.etl import transform
from shared.etl.migrate import migrate
from shared.settings import get_settings
from shared.stores import mongo, postgres

log = logging.getLogger(__name__)

RUN_LOCK_KEY = 0x5A1E_E710  # pg_try_advisory_lock key: one run at a time
MAX_REJECT_ID = 500
RESYNC_SECONDS = 3600  # however still the change count, read at least this often
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, order=True)
class Watermark:
    """How far a stream is loaded: the ``(ts, _id)`` of the last document loaded."""

    ts: datetime = EPOCH
    id: str = ""

    def as_json(self) -> dict[str, str]:
        return {"ts": self.ts.isoformat(), "id": self.id}


@dataclass(frozen=True)
class Stream:
    name: str
    collection: str
    ts_field: str
    table: str
    columns: tuple[str, ...]
    to_row: Callable[[dict[str, Any]], transform.Row | None]
    guard_version: bool


STREAMS = (
    Stream("opportunities", "opportunities", "updated_at", "fact_opportunity",
           transform.OPPORTUNITY_COLUMNS, transform.opportunity_row, guard_version=True),
    Stream("events", "events", "recorded_at", "fact_stage_change",
           transform.STAGE_CHANGE_COLUMNS, transform.stage_change_row, guard_version=False),
)  # fmt: skip


@dataclass
class RunResult:
    run_id: int | None
    status: str
    read: int = 0
    upserted: int = 0
    rejected: int = 0
    watermark_from: dict[str, Watermark] = field(default_factory=dict)
    watermark_to: dict[str, Watermark] = field(default_factory=dict)
    seconds: float = 0.0
    unchanged: bool = False

    def summary(self) -> str:
        if self.status == "skipped":
            return "Another ETL run is in progress; this one did nothing."
        if self.unchanged:
            return f"ETL run {self.run_id}: nothing changed in MongoDB since the last run."
        return (
            f"ETL run {self.run_id} {self.status}: {self.read:,} read, {self.upserted:,} "
            f"upserted, {self.rejected:,} rejected in {self.seconds:.2f} s."
        )


# ------------------------------------------------------------------------------- loading


_COPY_ESCAPES = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _copy_text(value: Any) -> str:
    """A value in PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime | date):
        return value.isoformat()
    text = str(value)
    return _COPY_ESCAPES.sub(lambda m: _COPY_ESCAPED[m.group()], text)


def _upsert(cur: Cursor, stream: Stream, rows: list[transform.Row]) -> int:
    """COPY ``rows`` into a staging table and merge them into the stream's table."""
    table, columns = sql.Identifier(stream.table), stream.columns
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    cur.execute(
        sql.SQL("CREATE TEMP TABLE etl_stage (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
            table
        )
    )
    buffer = io.StringIO("".join("\t".join(map(_copy_text, row)) + "\n" for row in rows))
    cur.copy_expert(sql.SQL("COPY etl_stage ({}) FROM STDIN").format(names).as_string(cur), buffer)
    key = sql.Identifier(columns[0])
    if stream.guard_version:
        action = sql.SQL("DO UPDATE SET ({}) = ({}) WHERE {}.version < EXCLUDED.version").format(
            names, sql.SQL(", ").join(sql.SQL("EXCLUDED.") + sql.Identifier(c) for c in columns),
            table,
        )  # fmt: skip
    else:
        action = sql.SQL("DO NOTHING")
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM etl_stage ON CONFLICT ({}) {}").format(
            table, names, names, key, action
        )
    )
    upserted = cur.rowcount
    if stream.table == "fact_opportunity":
        for dim, (dim_key, fact_column) in transform.DIMENSIONS.items():
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} ({}) SELECT DISTINCT {} FROM etl_stage ON CONFLICT DO NOTHING"
                ).format(sql.Identifier(dim), sql.Identifier(dim_key), sql.Identifier(fact_column))
            )
    cur.execute("DROP TABLE etl_stage")
    return int(upserted)


# Errors by which PostgreSQL refuses a row's values (classes 22, 23, 54): retried one by one.
REFUSED = (psycopg2.DataError, psycopg2.IntegrityError, psycopg2.errors.ProgramLimitExceeded)


def _load(
    cur: Cursor, stream: Stream, rows: list[transform.Row]
) -> tuple[int, list[tuple[int, str]]]:
    """Load ``rows``; if PostgreSQL refuses one, load them one by one. Returns how many rows
    were upserted and the (index, reason) of each refused row."""
    cur.execute("SAVEPOINT etl_batch")
    try:
        return _upsert(cur, stream, rows), []
    except REFUSED:
        cur.execute("ROLLBACK TO SAVEPOINT etl_batch")
    upserted, refused = 0, []
    for index, row in enumerate(rows):
        cur.execute("SAVEPOINT etl_row")
        try:
            upserted += _upsert(cur, stream, [row])
        except REFUSED as exc:
            cur.execute("ROLLBACK TO SAVEPOINT etl_row")
            refused.append((index, f"PostgreSQL refused it: {exc.pgerror or exc}".strip()))
    return upserted, refused


def _reject(cur: Cursor, run_id: int, stream: Stream, doc_id: str, reason: str, doc: Any) -> None:
    """Record a document the ETL could not load (its id cut to fit an index; the whole document
    is kept)."""
    document = transform.to_json(doc).replace("\\u0000", "\\ufffd")
    doc_id = doc_id[:MAX_REJECT_ID]
    cur.execute(
        """INSERT INTO etl_reject (run_id, stream, document_id, document_hash, reason, document)
           VALUES (%s, %s, %s, %s, %s, %s)
           ON CONFLICT (stream, document_id, document_hash) DO NOTHING""",
        (run_id, stream.name, doc_id, hashlib.sha256(document.encode()).hexdigest(), reason,
         document),
    )  # fmt: skip


def _calendar(cur: Cursor, years: set[int], known: set[int]) -> None:
    """Add the full years of ``years`` that ``dim_date`` lacks."""
    for year in sorted(years - known):
        cur.execute(
            """INSERT INTO dim_date
               SELECT to_char(d, 'YYYYMMDD')::int, d, extract(year FROM d),
                      extract(quarter FROM d), extract(month FROM d), trim(to_char(d, 'Month')),
                      extract(day FROM d), extract(isodow FROM d), trim(to_char(d, 'Day')),
                      extract(week FROM d), extract(isodow FROM d) >= 6
               FROM generate_series(make_date(%s, 1, 1), make_date(%s, 12, 31),
                                    interval '1 day') AS g(day),
                    LATERAL (SELECT g.day::date) AS x(d)
               ON CONFLICT DO NOTHING""",
            (year, year),
        )
        known.add(year)


# ------------------------------------------------------------------------------- running


def _read_watermark(cur: Cursor, stream: Stream) -> Watermark:
    cur.execute("SELECT last_ts, last_id FROM etl_watermark WHERE stream = %s", (stream.name,))
    found = cur.fetchone()
    return Watermark(found[0], found[1]) if found else Watermark()


def _save_watermark(cur: Cursor, stream: Stream, mark: Watermark) -> None:
    cur.execute(
        """INSERT INTO etl_watermark (stream, last_ts, last_id) VALUES (%s, %s, %s)
           ON CONFLICT (stream) DO UPDATE
               SET last_ts = EXCLUDED.last_ts, last_id = EXCLUDED.last_id
               WHERE (etl_watermark.last_ts, etl_watermark.last_id)
                     < (EXCLUDED.last_ts, EXCLUDED.last_id)""",
        (stream.name, mark.ts, mark.id),
    )


def _batches(docs: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prefetched(batches: Iterator[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
    """``batches``, read one ahead in a thread: MongoDB serves the next batch while this one is
    transformed and loaded. The reader stops soon after the consumer does, never blocking."""
    ahead: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                ahead.put(item, timeout=0.1)
                return True
        return False

    def read() -> None:
        try:
            for batch in batches:
                if not hand_over(("batch", batch)):
                    return
            hand_over(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            hand_over(("error", exc))

    reader = threading.Thread(target=read, name="etl-read", daemon=True)
    reader.start()
    try:
        while True:
            kind, item = ahead.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)


def _key(stream: Stream, doc: dict[str, Any]) -> Watermark | None:
    ts = doc.get(stream.ts_field)
    if not isinstance(ts, datetime) or not isinstance(doc.get("_id"), str):
        return None
    return Watermark(opportunities.aware(ts), doc["_id"])


def _latest_versions(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One document per ``_id``: the highest version (a batch may hold the same one twice)."""
    latest: dict[Any, dict[str, Any]] = {}
    for doc in docs:
        current = latest.get(doc.get("_id"))
        if current is None or (doc.get("version") or 0) >= (current.get("version") or 0):
            latest[doc.get("_id")] = doc
    return list(latest.values())


def _transform(
    stream: Stream, docs: list[dict[str, Any]]
) -> tuple[list[tuple[dict[str, Any], transform.Row]], list[tuple[dict[str, Any], str]]]:
    """The rows of ``docs`` (each with its document) and the documents rejected, with why."""
    rows, rejects = [], []
    for doc in docs:
        try:
            row = stream.to_row(doc)
        except transform.Rejected as exc:
            rejects.append((doc, exc.reason))
            continue
        if row is not None:
            rows.append((doc, row))
    return rows, rejects


def _store(
    cur: Cursor, run: RunResult, stream: Stream, docs: list[dict[str, Any]], known_years: set[int]
) -> tuple[int, int]:
    """Load ``docs`` of ``stream`` (rejecting what cannot be loaded); (upserted, rejected)."""
    rows, rejects = _transform(stream, docs)
    upserted, refused = _load(cur, stream, [row for _, row in rows]) if rows else (0, [])
    rejects += [(rows[index][0], reason) for index, reason in refused]
    for doc, reason in rejects:
        _reject(cur, run.run_id or 0, stream, str(doc.get("_id", "?")), reason, doc)
    date_keys = [i for i, column in enumerate(stream.columns) if column.endswith("date_key")]
    years = {row[i] // 10000 for _, row in rows for i in date_keys if row[i] is not None}
    _calendar(cur, years, known_years)
    return upserted, len(rejects)


def _run_stream(
    conn: Connection,
    run: RunResult,
    stream: Stream,
    on_batch: Callable[[str, int], None] | None,
    known_years: set[int],
    commit: Callable[[], None],
) -> None:
    settings = get_settings()
    with conn.cursor() as cur:
        start = _read_watermark(cur, stream)
    commit()
    run.watermark_from[stream.name] = run.watermark_to[stream.name] = start
    since = start.ts - timedelta(seconds=settings.etl_lag_seconds)
    collection = mongo.database(settings.etl_read_timeout_ms)[stream.collection]
    cursor = collection.find({stream.ts_field: {"$gte": since}}).sort(
        [(stream.ts_field, 1), ("_id", 1)]
    )
    cols = opportunities.collections()
    batches = _batches(cursor.batch_size(settings.etl_batch_size), settings.etl_batch_size)
    with cursor:
        for batch in _prefetched(batches):
            repaired = []
            if stream is STREAMS[0]:  # events lost to a crash: appended and loaded now
                repaired = opportunities.repair_events(cols, batch)
            keys = [k for k in (_key(stream, d) for d in batch) if k is not None]
            mark = max([run.watermark_to[stream.name], *keys])
            with conn.cursor() as cur:
                upserted, rejected = _store(cur, run, stream, _latest_versions(batch), known_years)
                if repaired:
                    more, also = _store(cur, run, STREAMS[1], repaired, known_years)
                    upserted, rejected = upserted + more, rejected + also
                _save_watermark(cur, stream, mark)
                cur.execute(
                    """UPDATE etl_run SET read = read + %s, upserted = upserted + %s,
                              rejected = rejected + %s, watermark_to = %s WHERE run_id = %s""",
                    (len(batch), upserted, rejected,
                     transform.to_json({**_marks(run.watermark_to), stream.name: mark.as_json()}),
                     run.run_id),
                )  # fmt: skip
            commit()
            run.read += len(batch)
            run.upserted += upserted
            run.rejected += rejected
            run.watermark_to[stream.name] = mark
            if on_batch is not None:
                on_batch(stream.name, len(batch))


def _marks(marks: dict[str, Watermark]) -> dict[str, dict[str, str]]:
    return {name: mark.as_json() for name, mark in marks.items()}


def pending(full: bool = False) -> int:
    """About how many documents a run would read (for a progress bar)."""
    db = mongo.database(get_settings().etl_read_timeout_ms)
    if full:
        return sum(db[s.collection].estimated_document_count() for s in STREAMS)
    with postgres.connection() as conn, conn.cursor() as cur:
        migrate(conn)
        lag = timedelta(seconds=get_settings().etl_lag_seconds)
        total = 0
        for stream in STREAMS:
            since = _read_watermark(cur, stream).ts - lag
            total += db[stream.collection].count_documents({stream.ts_field: {"$gte": since}})
        return total


def run(full: bool = False, on_batch: Callable[[str, int], None] | None = None) -> RunResult:
    """One ETL run; ``full`` rebuilds the facts from scratch. Returns what it did."""
    started = time.perf_counter()
    conn = postgres.pool().getconn()
    broken = True
    try:
        migrate(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (RUN_LOCK_KEY,))
            locked = cur.fetchone()[0]
        conn.commit()
        if not locked:
            log.warning("Another ETL run is in progress; this one exits.")
            broken = False
            return RunResult(None, "skipped")
        try:
            result = _locked_run(conn, full, on_batch)
        finally:
            with contextlib.suppress(psycopg2.Error):  # a lost connection has dropped it anyway
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (RUN_LOCK_KEY,))
                conn.commit()
        broken = False
        result.seconds = time.perf_counter() - started
        log.info(result.summary())
        return result
    finally:
        postgres.pool().putconn(conn, close=broken or bool(conn.closed))


def _locked_run(
    conn: Connection, full: bool, on_batch: Callable[[str, int], None] | None
) -> RunResult:
    with conn.cursor() as cur:
        cur.execute(
            """UPDATE etl_run SET status = 'failed', finished_at = now(),
                      error = 'abandoned: the process running it stopped'
               WHERE status = 'running'"""
        )
        marks = {s.name: Watermark() if full else _read_watermark(cur, s) for s in STREAMS}
        cur.execute(
            """INSERT INTO etl_run (kind, watermark_from, status) VALUES (%s, %s, 'running')
               RETURNING run_id""",
            ("full" if full else "incremental", transform.to_json(_marks(marks))),
        )
        run = RunResult(cur.fetchone()[0], "running")
        cur.execute("SELECT DISTINCT year FROM dim_date")
        known_years = {int(year) for (year,) in cur.fetchall()}
    conn.commit()
    # A full rebuild is one transaction: readers see the old tables until it commits whole.
    commit: Callable[[], None] = (lambda: None) if full else conn.commit
    try:
        source_changes = opportunities.changes(opportunities.collections())
        with conn.cursor() as cur:
            cur.execute(
                """SELECT source_changes, started_at > now() - %s * interval '1 second'
                   FROM etl_run WHERE status = 'succeeded' AND NOT skipped_reads
                   ORDER BY run_id DESC LIMIT 1""",
                (RESYNC_SECONDS,),
            )
            last = cur.fetchone()
            run.unchanged = not full and last is not None and tuple(last) == (source_changes, True)
            cur.execute(
                "UPDATE etl_run SET source_changes = %s, skipped_reads = %s WHERE run_id = %s",
                (source_changes, run.unchanged, run.run_id),
            )
            if full:
                cur.execute("DELETE FROM fact_opportunity")
                cur.execute("DELETE FROM fact_stage_change")
                cur.execute("DELETE FROM etl_watermark")
        commit()
        if run.unchanged:
            run.watermark_from, run.watermark_to = dict(marks), dict(marks)
        else:
            for stream in STREAMS:
                _run_stream(conn, run, stream, on_batch, known_years, commit)
    except Exception as exc:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
        run.status = "failed"
        _finish(conn, run, f"{type(exc).__name__}: {exc}")
        raise
    run.status = "succeeded"
    _finish(conn, run, None)
    return run


def _finish(conn: Connection, run: RunResult, error: str | None) -> None:
    """Record how the run ended (best effort: the database may be the thing that failed)."""
    try:
        with conn.cursor() as cur:
            cur.execute(
                """UPDATE etl_run SET status = %s, error = %s, finished_at = now(),
                          watermark_to = coalesce(watermark_to, watermark_from)
                   WHERE run_id = %s""",
                (run.status, error[:2000] if error else None, run.run_id),
            )
        conn.commit()
    except psycopg2.Error:
        log.warning("Could not record the end of ETL run %s", run.run_id)
