"""Capture throughput through the handler against raw pymongo doing the same database calls.

Ours: ``capture_opportunity`` called with a ``func.HttpRequest`` (body parsing, validation,
catalog check, id, document, event). Raw: ``find_one_and_update`` on the counter, ``insert_one``
of the document and ``insert_one`` of the event, with nothing of ours around them. Same server,
same indexes, same run, the two sides taking turns to go first; medians over repeats.
Uses MONGODB_URI when set, else an embedded nx-27017.

    python bench/capture.py [--n 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime

import azure.functions as func
from pymongo import MongoClient, ReturnDocument
from servers import bench_settings

from functions.capture import capture_opportunity
from shared.opportunities import collections
from shared.settings import use_settings

BODY = json.dumps(
    {
        "client_code": "CL-01169", "business_unit": "BU-05", "opportunity_type": "TY-04",
        "acv": 476458.92, "tcv": 943194.18, "margin": 0.06, "region": "RE-02",
        "territory": "TE-15", "industry": "IN-23", "lead_source": "LS-06", "seller_id": "NV-4",
        "expected_close_date": "2027-02-06", "notes": "Met the CFO.",
        "attributes": {"competitor": "Acme"},
    }
).encode()  # fmt: skip


def ours(n: int) -> float:
    request = func.HttpRequest(
        "POST", "http://localhost/api/opportunities", headers={"content-type": "application/json"},
        body=BODY,
    )  # fmt: skip
    start = time.perf_counter()
    for _ in range(n):
        response = capture_opportunity(request)
        assert response.status_code == 201, response.get_body()
    return n / (time.perf_counter() - start)


def raw(n: int, client: MongoClient, database: str) -> float:
    db = client[database]
    fields = json.loads(BODY)
    start = time.perf_counter()
    for _ in range(n):
        seq = db.counters.find_one_and_update(
            {"_id": "opportunity"}, {"$inc": {"seq": 1}}, upsert=True,
            return_document=ReturnDocument.AFTER,
        )["seq"]  # fmt: skip
        now = datetime.now(UTC)
        doc = {"_id": f"OP-{seq:06d}", "seq": seq, **fields, "created_at": now, "version": 1}
        db.opportunities.insert_one(doc)
        db.events.insert_one(
            {"_id": f"{doc['_id']}:1", "type": "captured", "at": now, "after": doc}
        )
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with ExitStack() as stack:
        settings = bench_settings(stack, {"mongodb", "postgres", "redis"})
        client: MongoClient = stack.enter_context(MongoClient(settings.mongodb_uri, tz_aware=True))
        ours_rates, raw_rates = [], []
        for repeat in range(args.repeats):
            ours_db, raw_db = f"bench_{uuid.uuid4().hex[:8]}", f"bench_{uuid.uuid4().hex[:8]}"
            use_settings(settings.model_copy(update={"mongodb_database": ours_db}))
            ours(10)  # warm up: connections, catalogs
            collections(client[raw_db])  # the same indexes on both sides
            for side in ("ours", "raw") if repeat % 2 == 0 else ("raw", "ours"):  # take turns
                if side == "ours":
                    ours_rates.append(ours(args.n))
                else:
                    raw_rates.append(raw(args.n, client, raw_db))
            client.drop_database(ours_db)
            client.drop_database(raw_db)
        mine, limit = statistics.median(ours_rates), statistics.median(raw_rates)
        print(f"capture_handler_per_second: {mine:.0f}")
        print(f"capture_raw_pymongo_per_second: {limit:.0f}")
        print(f"capture_ratio: {mine / limit:.2f}")


if __name__ == "__main__":
    main()
