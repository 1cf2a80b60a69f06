"""ETL throughput against a raw pymongo read of the same documents, and a run with nothing new.

Loads N captured opportunities (with their events, dated over the past two years), then in one
run, taking turns: a full ETL run (documents read per second) against iterating a plain pymongo
cursor over the same collections on the same server (``etl_ratio`` = ours / raw); then the
duration of an incremental run that finds nothing new (``noop_run_seconds``). Medians over
repeats. Uses MONGODB_URI / POSTGRES_DSN when set (in databases of its own), else embedded
servers.

    python bench/etl.py [--n 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import ExitStack
from datetime import timedelta

from servers import bench_settings, own_database
from tqdm import tqdm

from shared import opportunities
from shared.etl import pipeline
from shared.settings import get_settings, use_settings
from shared.stores import mongo

FIELDS = {
    "client_code": "CL-01169", "business_unit": "BU-05", "opportunity_type": "TY-04",
    "acv": 476458.92, "tcv": 943194.18, "margin": 0.06, "region": "RE-02", "territory": "TE-15",
    "industry": "IN-23", "lead_source": "LS-06", "seller_id": "NV-4", "stage": "S3",
    "lost_reason": None, "notes": "Met the CFO.", "attributes": {"competitor": "Acme"},
}  # fmt: skip


def load(n: int) -> None:
    cols = opportunities.collections()
    first = opportunities.reserve_ids(cols, n)
    now = opportunities.now_utc()
    chunk = 1000
    with tqdm(total=n, unit="doc", desc="load") as bar:
        for start in range(0, n, chunk):
            docs = []
            for seq in range(first + start, first + min(n, start + chunk)):
                when = now - timedelta(days=730) + timedelta(seconds=seq * 600)
                fields = {**FIELDS, "expected_close_date": (when + timedelta(days=90)).date()}
                docs.append(opportunities.new_document(fields, seq, when))
            opportunities.insert_many(cols, docs)
            bar.update(len(docs))


def raw_read() -> float:
    db = mongo.database(get_settings().etl_read_timeout_ms)  # the ETL's client settings
    start = time.perf_counter()
    count = sum(1 for name in ("opportunities", "events") for _ in db[name].find({}))
    return count / (time.perf_counter() - start)


def etl_full() -> float:
    result = pipeline.run(full=True)
    assert result.status == "succeeded" and result.rejected == 0, result.summary()
    return result.read / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with ExitStack() as stack:
        use_settings(own_database(stack, bench_settings(stack, {"mongodb", "postgres"})))
        load(args.n)
        pipeline.run()  # migrations, calendar, warm caches
        ours, raw, noop = [], [], []
        for repeat in range(args.repeats):
            for side in ("ours", "raw") if repeat % 2 == 0 else ("raw", "ours"):
                if side == "ours":
                    ours.append(etl_full())
                else:
                    raw.append(raw_read())
        for _ in range(5):
            result = pipeline.run()
            assert result.upserted == 0, result.summary()
            noop.append(result.seconds)
        mine, limit = statistics.median(ours), statistics.median(raw)
        print(f"etl_docs_per_second: {mine:.0f}")
        print(f"raw_read_docs_per_second: {limit:.0f}")
        print(f"etl_ratio: {mine / limit:.2f}")
        print(f"noop_run_seconds: {statistics.median(noop):.3f}")


if __name__ == "__main__":
    main()
