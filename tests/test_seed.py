"""The dummy company history: deterministic, valid through the service, with a ground truth
kept apart from the features, and loadable by the ETL whenever it is seeded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared import opportunities, seed
from shared.etl import pipeline
from tests.test_etl import assert_equals_a_full_rebuild, capture, query

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_the_same_seed_gives_the_same_history(settings, db) -> None:
    seed.seed(150, 3, now=NOW)
    first = list(db.opportunities.find().sort("seq", 1))
    first_events = list(db.events.find().sort("_id", 1))
    for name in ("opportunities", "events", "ground_truth", "counters"):
        db.drop_collection(name)
    seed.seed(150, 3, now=NOW)
    assert list(db.opportunities.find().sort("seq", 1)) == first
    assert list(db.events.find().sort("_id", 1)) == first_events
    seed.seed(150, 4, now=NOW)
    other = list(db.opportunities.find({"seq": {"$gt": 150}}).sort("seq", 1))
    assert [d["acv"] for d in other] != [d["acv"] for d in first]


def test_every_opportunity_is_valid_and_its_events_tell_its_life(settings, db) -> None:
    summary = seed.seed(300, 1, now=NOW)
    assert summary.created == 300 == summary.won + summary.lost + summary.open
    assert 0.2 < summary.won / (summary.won + summary.lost) < 0.8 and summary.open > 0
    for doc in db.opportunities.find():
        api = opportunities.to_api(doc)  # the capture schema accepts it
        events = list(db.events.find({"opportunity_id": doc["_id"]}).sort("version", 1))
        assert [e["version"] for e in events] == list(range(1, doc["version"] + 1))
        assert events[0]["type"] == "captured" and events[-1]["after"]["stage"] == api["stage"]
        stages = [e["after"]["stage"] for e in events]
        assert stages[: len(stages) - (api["stage"] in ("Won", "Lost"))] == [
            f"S{i}" for i in range(1, len(stages) + 1 - (api["stage"] in ("Won", "Lost")))
        ]
        created = datetime.fromisoformat(api["created_at"])
        assert created <= NOW
        if api["closed_at"] is not None:
            assert created < datetime.fromisoformat(api["closed_at"]) <= NOW
            assert (api["stage"] == "Lost") == (api["lost_reason"] is not None)
        assert "p_win" not in doc and "p_win" not in doc.get("attributes", {})


def test_the_ground_truth_is_apart_and_predicts_the_outcomes(settings, db) -> None:
    seed.seed(1500, 2, now=NOW)
    truth = {g["_id"]: g["p_win"] for g in db.ground_truth.find()}
    assert len(truth) == 1500
    closed = [(truth[d["_id"]], d["stage"] == "Won") for d in db.opportunities.find(
        {"stage": {"$in": ["Won", "Lost"]}})]  # fmt: skip
    won = [p for p, w in closed if w]
    lost = [p for p, w in closed if not w]
    pairs = sum((a > b) + 0.5 * (a == b) for a in won for b in lost)
    auc = pairs / (len(won) * len(lost))
    assert 0.75 < auc < 0.99  # learnable, not trivial


def test_the_demo_is_seeded_only_into_an_empty_database(settings, db) -> None:
    assert seed.seed_demo_if_empty(0) is None
    assert seed.seed_demo_if_empty(40).created == 40
    assert seed.seed_demo_if_empty(40) is None
    assert db.opportunities.count_documents({}) == 40


@pytest.mark.usefixtures("db")
def test_history_seeded_after_etl_runs_still_reaches_reporting(pg) -> None:
    capture(2)
    pipeline.run()
    seed.seed(200, 5)
    pipeline.run()
    assert query("SELECT count(*) FROM fact_opportunity") == [(202,)]
    assert_equals_a_full_rebuild()
