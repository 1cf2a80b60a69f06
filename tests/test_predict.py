"""The predict function against real servers: answers and factors, the Redis cache (hits, misses,
keys, single flight, Redis stopped mid-test) and the same problem+json errors as capture."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import UTC, datetime

import psycopg2
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared import predictions
from shared.devhost.servers import EmbeddedServers
from shared.model import jobs, registry
from shared.model.features import DEFAULT_SPEC, canonical, feature_hash
from shared.opportunities import NewOpportunity, parse
from shared.settings import use_settings
from tests.conftest import ADMIN_KEY, opportunity
from tests.test_model import WEAK_SPEC, history

WITHOUT_CACHE = ("cache",)


def fresh(**overrides: object) -> dict[str, object]:
    """A capture body whose features no other test asks about (the session shares one Redis)."""
    acv = float(random.randint(1_000, 9_999_999))
    return opportunity(**{"acv": acv, "tcv": acv * 2, **overrides})


def same_answer(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in WITHOUT_CACHE} == {
        k: v for k, v in b.items() if k not in WITHOUT_CACHE
    }


@pytest.fixture
def trained(pg, db) -> jobs.TrainResult:
    history()
    return jobs.train()


def test_an_answer_has_probability_outcome_version_and_signed_factors(trained, api) -> None:
    answer = api.post("/predict", json=opportunity()).json()
    assert 0 < answer["probability"] < 1
    outcome = "Won" if answer["probability"] >= answer["threshold"] else "Lost"
    assert answer["predicted_outcome"] == outcome
    assert answer["model_version"] == trained.version and answer["prior"] is False
    up, down = answer["factors"]["up"], answer["factors"]["down"]
    assert up and down and len(up) <= 3 and len(down) <= 3
    assert all(f["contribution"] > 0 for f in up) and all(f["contribution"] < 0 for f in down)
    assert {f["feature"] for f in up + down} <= set(DEFAULT_SPEC.names)
    assert [f["contribution"] for f in up] == sorted((f["contribution"] for f in up), reverse=True)
    body = opportunity()
    assert all(f["value"] == body[f["feature"]] for f in up + down if f["feature"] in body)


def test_cache_hit_and_miss_return_identical_answers(trained, api) -> None:
    body = fresh()
    first = api.post("/predict", json=body).json()
    second = api.post("/predict", json=body).json()
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert same_answer(first, second)
    opp_id = api.post("/opportunities", json=fresh()).json()["opportunity_id"]
    stored = [api.get(f"/opportunities/{opp_id}/prediction").json() for _ in range(2)]
    assert stored[0]["cache"] == "hit"  # the capture's own prediction filled the cache
    assert same_answer(*stored) and stored[0]["opportunity_id"] == opp_id


def test_a_new_model_version_misses(trained, api) -> None:
    body = fresh()
    assert api.post("/predict", json=body).json()["cache"] == "miss"
    assert api.post("/predict", json=body).json()["cache"] == "hit"
    other = jobs.train(spec=WEAK_SPEC)
    admin = {"x-functions-key": ADMIN_KEY}
    assert api.post(f"/models/{other.version}/activate", headers=admin).status_code == 200
    answer = api.post("/predict", json=body).json()
    assert answer["cache"] == "miss" and answer["model_version"] == other.version


def test_a_batch_answers_in_order_like_single_predictions(trained, api) -> None:
    bodies = [fresh(seller_id=f"NV-{i}") for i in range(3)]
    batch = api.post("/predict/batch", json={"opportunities": bodies})
    assert batch.status_code == 200
    answers = batch.json()["predictions"]
    assert [a["cache"] for a in answers] == ["miss"] * 3
    singles = [api.post("/predict", json=b).json() for b in bodies]
    assert [s["cache"] for s in singles] == ["hit"] * 3
    assert all(same_answer(a, s) for a, s in zip(answers, singles, strict=True))
    assert len({a["probability"] for a in answers}) == 3


def test_one_computation_per_key_at_a_time(trained) -> None:
    record = {**fresh(), "created_at": "2026-01-01T00:00:00Z"}
    start = threading.Barrier(6)
    statuses: list[str] = []

    def ask() -> None:
        start.wait()
        statuses.append(predictions.answer([record])[0]["cache"])

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == ["hit"] * 5 + ["miss"]


BODY_KEYS = sorted(opportunity())


@hypothesis_settings(max_examples=50, deadline=None)
@given(
    order=st.permutations(BODY_KEYS),
    acv=st.sampled_from(["50000", "50000.0", "5e4", "5.0E4", "50000.000"]),
    margin=st.sampled_from(["0.15", "0.150", "1.5e-1", "15E-2"]),
)
def test_the_cache_key_ignores_key_order_and_number_formatting(order, acv, margin) -> None:
    body = opportunity(acv=50000.0, tcv=100000.0, margin=0.15)
    text = "{" + ",".join(
        f'"{k}":{acv if k == "acv" else margin if k == "margin" else json.dumps(body[k])}'
        for k in order
    ) + "}"  # fmt: skip
    record = {**parse(NewOpportunity, text).model_dump(), "created_at": "2026-01-01"}
    reference = {**parse(NewOpportunity, json.dumps(body)).model_dump(), "created_at": "2026-01-01"}
    assert feature_hash(canonical(DEFAULT_SPEC, record)) == feature_hash(
        canonical(DEFAULT_SPEC, reference)
    )


def test_different_features_give_different_keys() -> None:
    one = canonical(DEFAULT_SPEC, {**opportunity(), "created_at": "2026-01-01"})
    other = canonical(DEFAULT_SPEC, {**opportunity(margin=0.16), "created_at": "2026-01-01"})
    assert feature_hash(one) != feature_hash(other)


def test_redis_stopped_mid_test_bypasses_the_cache(trained, api, pg, tmp_path) -> None:
    with EmbeddedServers(tmp_path, ["redis"]) as own:
        mine = pg.model_copy(update={"redis_url": own.urls["redis"]})
        use_settings(mine)
        body = fresh()
        assert api.post("/predict", json=body).json()["cache"] == "miss"
        cached = api.post("/predict", json=body).json()
        assert cached["cache"] == "hit"
        own.stop()
        started = time.monotonic()
        down = api.post("/predict", json=body)
        assert down.status_code == 200 and time.monotonic() - started < 5
        assert down.json()["cache"] == "bypass" and same_answer(down.json(), cached)
        batch = api.post("/predict/batch", json={"opportunities": [opportunity()] * 2})
        assert [a["cache"] for a in batch.json()["predictions"]] == ["bypass"] * 2
        captured = api.post("/opportunities", json=opportunity())
        assert captured.status_code == 201
        assert captured.json()["prediction"]["cache"] == "bypass"
        own.start()
        use_settings(mine.model_copy(update={"redis_url": own.urls["redis"]}))
        assert api.post("/predict", json=body).json()["cache"] != "bypass"  # back in use
    use_settings(pg)


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_bad_input_gets_the_same_problems_as_capture(api, db, path) -> None:
    def wrap(body: object) -> object:
        return {"opportunities": [body]} if path.endswith("batch") else body

    prefix = "opportunities.0." if path.endswith("batch") else ""
    text = api.post(path, content=b"{}", headers={"content-type": "text/plain"})
    assert text.status_code == 415
    broken = api.post(path, content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 400
    for response in (text, broken):
        assert response.headers["content-type"].startswith("application/problem+json")
    unknown = api.post(path, json=wrap(opportunity(region="RE-99")))
    assert unknown.status_code == 422
    assert [e["path"] for e in unknown.json()["errors"]] == [prefix + "region"]
    invalid = api.post(path, json=wrap(opportunity(acv=-1, tcv=-1)))
    assert invalid.status_code == 422
    assert {e["path"] for e in invalid.json()["errors"]} == {prefix + "acv", prefix + "tcv"}
    unsafe = api.post(path, json=wrap(opportunity(attributes={"$where": 1})))
    assert [e["path"] for e in unsafe.json()["errors"]] == [prefix + "attributes.$where"]
    too_big = (  # over MAX_BODY_BYTES (256 KiB), or MAX_BATCH_BODY_BYTES (4 MiB) for a batch
        {"opportunities": [opportunity(notes="x" * 9_000)] * 500}
        if path.endswith("batch")
        else opportunity(notes="x" * 300_000)
    )
    huge = api.post(path, json=too_big)
    assert huge.status_code == 413


def test_a_batch_holds_one_to_a_thousand(api, db) -> None:
    empty = api.post("/predict/batch", json={"opportunities": []})
    assert empty.status_code == 422 and empty.json()["errors"][0]["path"] == "opportunities"
    small = opportunity(notes="", attributes={})
    over = api.post("/predict/batch", json={"opportunities": [small] * 1001})
    assert over.status_code == 422 and "1000" in over.json()["errors"][0]["message"]
    full = api.post("/predict/batch", json={"opportunities": [small] * 1000})
    assert full.status_code == 200 and len(full.json()["predictions"]) == 1000


def test_prediction_of_an_unknown_opportunity_is_404(api, db) -> None:
    response = api.get("/opportunities/OP-999999/prediction")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


def test_the_model_card_shows_metrics_calibration_and_importance(trained, api) -> None:
    card = api.get("/model").json()
    assert card["version"] == trained.version and card["kind"] == trained.kind
    assert card["metrics"] == trained.metrics
    assert len(card["calibration"]) == 10 and set(card["importance"]) == set(DEFAULT_SPEC.names)
    assert card["trained_at"] and card["data_from"] and card["data_to"]
    assert card["threshold"] == registry.served().model.threshold


def test_postgres_down_keeps_the_loaded_model_answering(settings, db, tmp_path) -> None:
    def ask() -> dict:
        return predictions.predict_new(parse(NewOpportunity, json.dumps(fresh())))

    with EmbeddedServers(tmp_path, ["postgres"]) as own:
        mine = settings.model_copy(
            update={"postgres_dsn": own.urls["postgres"], "dependency_timeout_ms": 1000}
        )
        use_settings(mine)
        history()
        version = jobs.train().version
        assert ask()["model_version"] == version  # loaded
        own.stop()
        registry.forget()  # the next prediction looks the active version up: it cannot
        started = time.monotonic()
        assert ask()["model_version"] == version
        assert time.monotonic() - started < 5
        use_settings(mine)  # a new process, in effect: nothing loaded
        with pytest.raises(psycopg2.OperationalError):
            ask()
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError):
            ask()  # the outage is remembered for a few seconds: no new wait
        assert time.monotonic() - started < 0.5
    use_settings(settings)


@hypothesis_settings(max_examples=50, deadline=None)
@given(acv=st.integers(min_value=0, max_value=10**9), day=st.dates())
def test_an_api_body_a_document_and_a_reporting_row_give_one_key(acv: int, day) -> None:
    """The same opportunity as JSON (text dates, numbers as written), as a MongoDB document
    (dates as UTC midnights) and as a reporting row (Decimal amounts, date objects)."""
    from decimal import Decimal

    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    api = {**opportunity(acv=acv, tcv=acv * 2), "expected_close_date": day.isoformat(),
           "created_at": "2026-01-02T03:04:05Z"}  # fmt: skip
    document = {**api, "acv": float(acv), "tcv": float(acv * 2), "created_at": created,
                "expected_close_date": datetime.combine(day, datetime.min.time(), UTC)}  # fmt: skip
    row = {**api, "acv": Decimal(acv), "tcv": Decimal(acv * 2), "margin": Decimal("0.06"),
           "created_at": created, "expected_close_date": day}  # fmt: skip
    keys = {feature_hash(canonical(DEFAULT_SPEC, r)) for r in (api, document, row)}
    assert len(keys) == 1
