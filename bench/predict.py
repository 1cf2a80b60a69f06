"""Prediction latency through the handler against the raw limits, in one run.

- cached: ``POST /api/predict`` answered from Redis through the handler (``func.HttpRequest`` in,
  parsing, validation, features, key, GET) against a raw redis-py GET of the same key;
  p50 / p50 as ``cached_predict_ratio`` (target <= 3).
- uncached: the same handler with features never seen before (model, explanations, SET) against
  the bare model's ``predict_proba`` on one NumPy row; ``uncached_predict_ratio`` (target <= 2).
- batch: ``POST /api/predict/batch`` of 1,000 new opportunities; ``batch_rows_per_second``.

Trains on a generated history first. Uses server URLs when set, else embedded servers.

    python bench/predict.py [--n 2000] [--history 3000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime

import azure.functions as func
import redis
from servers import bench_settings, own_database

from functions.predict import predict, predict_batch
from shared import predictions, seed
from shared.etl import pipeline
from shared.model import jobs, registry
from shared.model.features import canonical
from shared.opportunities import NewOpportunity, parse
from shared.settings import use_settings

BODY = {
    "client_code": "CL-00011", "business_unit": "BU-01", "opportunity_type": "TY-01",
    "acv": 50000.0, "tcv": 100000.0, "margin": 0.15, "region": "RE-01", "territory": "TE-01",
    "industry": "IN-01", "lead_source": "LS-01", "seller_id": "NV-1",
    "expected_close_date": "2027-03-01",
}  # fmt: skip


def request(path: str, body: object) -> func.HttpRequest:
    return func.HttpRequest(
        "POST", f"http://localhost/api/{path}", headers={"content-type": "application/json"},
        body=json.dumps(body).encode(),
    )  # fmt: skip


def p50(call: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--history", type=int, default=3000)
    args = parser.parse_args()
    with ExitStack() as stack:
        settings = own_database(stack, bench_settings(stack, {"mongodb", "postgres", "redis"}))
        use_settings(settings)
        seed.seed(args.history, 1)
        pipeline.run()
        jobs.train()
        served = registry.served()

        today = datetime.now(UTC)  # what-if predictions are made as if created today
        cached = request("predict", BODY)
        assert predict(cached).status_code == 200  # fills the cache
        answer = json.loads(predict(cached).get_body())
        assert answer["cache"] == "hit", answer
        record = {**parse(NewOpportunity, json.dumps(BODY)).model_dump(), "created_at": today}
        key = predictions.cache_key(served, canonical(served.model.spec, record))
        raw = redis.Redis.from_url(settings.redis_url)
        assert raw.get(key) is not None, "the benchmark must read the key the handler reads"
        ours_cached = p50(lambda: predict(cached), args.n)
        raw_get = p50(lambda: raw.get(key), args.n)

        fresh = iter([request("predict", {**BODY, "acv": 1000.0 + i, "tcv": 5000.0 + i})
                      for i in range(args.n)])  # fmt: skip
        ours_uncached = p50(lambda: predict(next(fresh)), args.n)
        row = served.model.encoder.transform([canonical(served.model.spec, record)])
        bare = p50(lambda: served.model.estimator.predict_proba(row), args.n)

        rates = []
        for repeat in range(5):
            bodies = [{**BODY, "acv": 10_000.0 + repeat * 1000 + i, "tcv": 90_000.0 + i}
                      for i in range(1000)]  # fmt: skip
            batch = request("predict/batch", {"opportunities": bodies})
            start = time.perf_counter()
            assert predict_batch(batch).status_code == 200
            rates.append(1000 / (time.perf_counter() - start))

        print(f"model_kind: {served.model.kind}")
        print(f"cached_predict_p50_us: {ours_cached * 1e6:.0f}")
        print(f"raw_redis_get_p50_us: {raw_get * 1e6:.0f}")
        print(f"cached_predict_ratio: {ours_cached / raw_get:.2f}")
        print(f"uncached_predict_p50_us: {ours_uncached * 1e6:.0f}")
        print(f"bare_predict_proba_p50_us: {bare * 1e6:.0f}")
        print(f"uncached_predict_ratio: {ours_uncached / bare:.2f}")
        print(f"batch_rows_per_second: {statistics.median(rates):.0f}")


if __name__ == "__main__":
    main()
