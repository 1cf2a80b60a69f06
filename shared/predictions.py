"""Predictions as the API serves them: validated input, the active model, the Redis cache.

Cache keys are ``salespredict:prediction:<model version>-<artifact hash>:<feature-spec
version>:<hash of the canonical features>``, so a new model or spec never serves an old answer
and nothing is ever flushed; entries expire after ``PREDICTION_CACHE_TTL_SECONDS``. Within a
process one computation per key runs at a time (the others wait for its answer). Redis has short
timeouts; when it is slow or down the answer is computed and marked ``cache: bypass``, never
failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from shared import opportunities
from shared.errors import FieldProblem, InvalidInput, SettingsError
from shared.model import registry
from shared.model.features import Canonical, canonical, feature_hash
from shared.opportunities import NewOpportunity, Opportunity
from shared.settings import get_settings
from shared.stores import cache

log = logging.getLogger(__name__)

KEY_PREFIX = "salespredict:prediction"
MAX_BATCH = 1000
CacheStatus = Literal["hit", "miss", "bypass"]


class Factor(BaseModel):
    feature: str
    value: str | float | None
    contribution: float = Field(description="Change in win probability this feature causes.")


class Factors(BaseModel):
    up: list[Factor] = Field(description="Features pushing towards Won, strongest first.")
    down: list[Factor] = Field(description="Features pushing towards Lost, strongest first.")


class Prediction(BaseModel):
    """One prediction: how likely the opportunity is to be won, and why."""

    opportunity_id: str | None = None
    probability: float = Field(ge=0, le=1, description="Calibrated probability of Won.")
    predicted_outcome: Literal["Won", "Lost"]
    threshold: float = Field(description="Probability from which the outcome is Won.")
    model_version: int = Field(description="Registry version; 0 before any model is trained.")
    prior: bool = Field(description="True when the cold-start prior model answered.")
    factors: Factors
    cache: CacheStatus


class CapturedOpportunity(Opportunity):
    """The answer to a capture: the stored opportunity and its first prediction."""

    prediction: Prediction | None = Field(
        description="Null only when no model could be reached; the capture is stored anyway."
    )


class PredictBatch(BaseModel):
    """The body of ``POST /api/predict/batch``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    opportunities: list[NewOpportunity] = Field(min_length=1, max_length=MAX_BATCH)


class PredictionBatch(BaseModel):
    predictions: list[Prediction]


# ------------------------------------------------------------------------------- serving


def cache_key(served: registry.Served, features: Canonical) -> str:
    return f"{KEY_PREFIX}:{served.key}:{served.model.spec.version}:{feature_hash(features)}"


_flights_guard = threading.Lock()
_flights: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()


@contextlib.contextmanager
def _single_flight(keys: Sequence[str]) -> Iterator[None]:
    """Hold the lock of every key (in sorted order, so two batches cannot deadlock)."""
    with _flights_guard:
        locks = [_flights.setdefault(key, threading.Lock()) for key in sorted(set(keys))]
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


def _decoded(value: bytes | str | None) -> dict[str, Any] | None:
    """A cached answer, or None when missing or unreadable (then it is computed again)."""
    if value is None:
        return None
    try:
        answer = json.loads(value)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _cached(keys: Sequence[str]) -> list[dict[str, Any] | None] | None:
    """The cached answers of ``keys`` (None where missing); None when Redis failed."""
    try:
        client = cache.client()
        found = client.mget(keys) if len(keys) > 1 else [client.get(keys[0])]
    except (redis.RedisError, SettingsError) as exc:
        log.warning("Prediction cache bypassed: %s", exc)
        return None
    return [_decoded(value) for value in found]


def _store(answers: dict[str, dict[str, Any]]) -> None:
    ttl = get_settings().prediction_cache_ttl_seconds
    try:
        with cache.client().pipeline(transaction=False) as pipe:
            for key, answer in answers.items():
                pipe.set(key, json.dumps(answer, separators=(",", ":")), ex=ttl)
            pipe.execute()
    except (redis.RedisError, SettingsError) as exc:
        log.warning("Prediction cache not written: %s", exc)


def _compute(served: registry.Served, rows: Sequence[Canonical]) -> list[dict[str, Any]]:
    base = {
        "threshold": served.model.threshold,
        "model_version": served.version,
        "prior": served.model.is_prior,
    }
    return [{**answer, **base} for answer in served.model.predict(rows)]


def answer(rows: Sequence[Canonical | dict[str, Any]]) -> list[dict[str, Any]]:
    """Predictions for opportunity records (API bodies or stored documents), cache first."""
    served = registry.served()
    features = [canonical(served.model.spec, row) for row in rows]
    keys = [cache_key(served, f) for f in features]
    found = _cached(keys)
    if found is not None and all(a is not None for a in found):
        return [{**a, "cache": "hit"} for a in found if a is not None]
    status: CacheStatus = "bypass" if found is None else "miss"
    with _single_flight(keys):
        if found is not None:
            found = _cached(keys)  # another request may have computed them while we waited
            status = "bypass" if found is None else "miss"
        known = found or [None] * len(keys)
        out = {i: {**a, "cache": "hit"} for i, a in enumerate(known) if a is not None}
        todo = [i for i in range(len(keys)) if i not in out]
        computed = _compute(served, [features[i] for i in todo])
        for i, a in zip(todo, computed, strict=True):
            out[i] = {**a, "cache": status}
        if status == "miss":
            _store({keys[i]: a for i, a in zip(todo, computed, strict=True)})
    return [out[i] for i in range(len(keys))]


def _today_record(new: NewOpportunity) -> dict[str, Any]:
    return {**new.model_dump(), "created_at": datetime.now(UTC)}


def _check_catalogs(items: Mapping[str, NewOpportunity]) -> None:
    """Refuse (422) codes their catalogs do not list, each item's under its path prefix."""
    db = opportunities.collections().db
    problems = [
        FieldProblem(prefix + p.path, p.message)
        for prefix, item in items.items()
        for p in opportunities.check_catalogs(item.model_dump(), db)
    ]
    if problems:
        raise InvalidInput.of(problems)


def predict_new(new: NewOpportunity) -> dict[str, Any]:
    """A what-if prediction for an opportunity created today; nothing is stored."""
    _check_catalogs({"": new})
    return answer([_today_record(new)])[0]


def predict_batch(batch: PredictBatch) -> list[dict[str, Any]]:
    """What-if predictions for up to ``MAX_BATCH`` opportunities, in order."""
    _check_catalogs({f"opportunities.{i}.": new for i, new in enumerate(batch.opportunities)})
    return answer([_today_record(new) for new in batch.opportunities])


def predict_opportunity(opp_id: str) -> dict[str, Any]:
    """The prediction of a stored opportunity, from its current fields."""
    stored = opportunities.get(opp_id)
    return {"opportunity_id": opp_id, **answer([stored])[0]}


def for_capture(opportunity: dict[str, Any]) -> dict[str, Any] | None:
    """The prediction a capture response carries; None (and a log line) if it cannot be made:
    a stored capture never fails for want of a prediction."""
    try:
        return {"opportunity_id": opportunity["opportunity_id"], **answer([opportunity])[0]}
    except Exception:  # the capture is stored: its answer must not become an error
        log.exception("Capture of %s answered without a prediction", opportunity["opportunity_id"])
        return None


def model_card() -> dict[str, Any]:
    """The active model's card: version, training time and window, metrics, calibration,
    feature importance."""
    served = registry.served()
    card = {k: v for k, v in served.card.items() if k != "sha256"}
    card["trained_at"] = card.pop("created_at", None)
    card["threshold"] = served.model.threshold
    card["features"] = served.model.spec.as_json()
    card["spec_version"] = served.model.spec.version
    return card
