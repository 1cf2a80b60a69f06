"""Model quality against the truth: on a generated company history, the holdout ROC AUC of the
trained model divided by the ROC AUC of the ground-truth win probabilities on the same holdout
(the best any model could do), and how long ``salespredict train`` takes.

Seeds N opportunities through the service, loads them with the ETL, trains as the ETL timer
does. Uses MONGODB_URI / POSTGRES_DSN when set (in databases of its own), else embedded servers.

    python bench/model.py [--n 50000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

from servers import bench_settings, own_database
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from shared import seed
from shared.etl import pipeline
from shared.model import jobs
from shared.settings import get_settings, use_settings
from shared.stores import mongo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with ExitStack() as stack:
        settings = bench_settings(stack, {"mongodb", "postgres", "redis"})
        use_settings(own_database(stack, settings))
        with tqdm(total=args.n, desc="seed", unit="opportunity") as bar:
            seed.seed(args.n, args.seed, progress=bar.update)
        with tqdm(total=pipeline.pending(), desc="etl", unit="doc") as bar:
            pipeline.run(on_batch=lambda _, n: bar.update(n))
        started = time.perf_counter()
        result = jobs.train(seed=args.seed)
        seconds = time.perf_counter() - started
        db = mongo.database(get_settings().etl_read_timeout_ms)  # long reads
        truth = {g["_id"]: g["p_win"] for g in db.ground_truth.find({}, {"p_win": 1})}
        won = {
            d["_id"]: d["stage"] == "Won"
            for d in db.opportunities.find({"_id": {"$in": result.holdout_ids}}, {"stage": 1})
        }
        y = [won[i] for i in result.holdout_ids]
        oracle = roc_auc_score(y, [truth[i] for i in result.holdout_ids])
        ours = result.metrics["roc_auc"]
        print(f"model_kind: {result.kind}")
        print(f"closed_deals: {result.metrics['n_train'] + result.metrics['n_test']}")
        print(f"holdout_roc_auc: {ours:.4f}")
        print(f"oracle_roc_auc: {oracle:.4f}")
        print(f"oracle_auc_ratio: {ours / oracle:.3f}")
        print(f"train_seconds: {seconds:.1f}")


if __name__ == "__main__":
    main()
