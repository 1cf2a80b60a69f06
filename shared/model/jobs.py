"""Training and scoring jobs on the reporting database: ``salespredict train``, and the model
step the ETL timer runs after each load.

Training reads the closed deals of ``fact_opportunity`` (their state as loaded, with only the
features known while open), fits, stores the new version, and activates it only if its holdout
ROC AUC is at least the active model's on the same holdout. It is due when no model exists,
when ``TRAIN_SCHEDULE`` has fired since the last one, or when ``TRAIN_MIN_NEW_CLOSED`` deals
have closed since. Scoring writes every open opportunity's prediction to ``fact_prediction``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from psycopg2.extensions import connection as Connection
from psycopg2.extras import RealDictCursor, execute_values
from sklearn.metrics import roc_auc_score

from shared import schedule
from shared.errors import ArtifactTampered
from shared.etl.migrate import migrate
from shared.model import registry, training
from shared.model.features import DEFAULT_SPEC, FeatureSpec, canonical
from shared.model.predictor import Model
from shared.model.training import Evaluation, Trained
from shared.settings import get_settings
from shared.stores import postgres

log = logging.getLogger(__name__)

SCORE_CHUNK = 2000  # open deals explained per predict call (bounded memory)

FEATURE_COLUMNS = """opportunity_id, client_code, business_unit, opportunity_type, region,
    territory, industry, lead_source, seller_id, acv::float8 AS acv, tcv::float8 AS tcv,
    margin::float8 AS margin, expected_close_date, created_at, attributes"""


@dataclass
class TrainResult:
    version: int
    kind: str
    activated: bool
    decision: str
    metrics: dict[str, Any]
    holdout_ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        state = "activated" if self.activated else "stored, not activated"
        auc = self.metrics.get("roc_auc")
        figure = f", holdout roc_auc {auc}" if auc is not None else ""
        return f"Model version {self.version} ({self.kind}{figure}): {state}. {self.decision}"


def closed_deals(conn: Connection) -> list[dict[str, Any]]:
    """Every closed deal, oldest closing first, with its fields as they were while it was open
    (``open_state``, kept when it closed; a deal imported or captured closed has only its final
    fields)."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            f"""SELECT {FEATURE_COLUMNS}, closed_at, is_won, document -> 'open_state' AS open_state
                FROM fact_opportunity
                WHERE is_closed AND NOT is_deleted ORDER BY closed_at, opportunity_id"""
        )
        return [_while_open(dict(row)) for row in cur.fetchall()]


def _while_open(row: dict[str, Any]) -> dict[str, Any]:
    open_state = row.pop("open_state") or {}
    return {**row, **open_state}


def _auc_on(model: Model, records: list[dict[str, Any]], y: np.ndarray) -> float:
    rows = [canonical(model.spec, record) for record in records]
    return float(roc_auc_score(y, model.probabilities(rows)))


@dataclass(frozen=True)
class _Active:
    version: int
    model: Model
    data_to: datetime | None


def _active(conn: Connection) -> _Active | None:
    """The active model; None when there is none, or it fails its hash check."""
    version = registry.active_version(conn)
    if version is None:
        return None
    try:
        model = registry.load(conn, version)
    except ArtifactTampered:
        log.exception("The active model cannot be loaded; a new one replaces it")
        return None
    return _Active(version, model, registry.card(conn, version)["data_to"])


def _judge(
    trained: Trained, current: _Active | None, records: list[dict[str, Any]], y: np.ndarray
) -> tuple[bool, str]:
    """Whether a trained model may replace ``current``, and why.

    Both are scored on the holdout deals that closed after ``current``'s training window (so it
    cannot have learnt them), or on the whole holdout when those lack an outcome.
    """
    if current is None:
        return True, "No model was active (or it failed its hash check)."
    if current.model.is_prior:
        return True, "A trained model replaces the cold-start prior."
    hold = trained.holdout
    unseen = [
        i for i in hold if current.data_to is None or records[i]["closed_at"] > current.data_to
    ]
    if len(set(y[unseen].tolist())) == 2:
        hold, where = np.array(unseen), "the holdout deals it has not seen"
    else:
        where = "the same holdout"
    holdout = [records[i] for i in hold]
    ours = _auc_on(trained.model, holdout, y[hold])
    theirs = _auc_on(current.model, holdout, y[hold])
    comparison = ">=" if ours >= theirs else "<"
    return ours >= theirs, (
        f"Holdout roc_auc {ours:.4f} {comparison} {theirs:.4f} of active version "
        f"{current.version} on {where} ({len(hold)} deals)."
    )


def train(
    spec: FeatureSpec = DEFAULT_SPEC,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train on every closed deal, store the version, activate it if it does at least as well."""
    say = progress or (lambda _: None)
    with postgres.connection() as conn:
        migrate(conn)
        say("reading closed deals")
        records = closed_deals(conn)  # oldest closing first
        active_then = registry.active_version(conn)
        current = _active(conn)
    y = np.array([bool(r["is_won"]) for r in records], dtype=int)
    rows = [canonical(spec, record) for record in records]
    counts = (int(y.sum()), len(y) - int(y.sum()))
    trained = None
    if training.enough_data(y):
        order = np.array([r["closed_at"].timestamp() for r in records])
        try:
            trained = training.fit(spec, rows, y, order=order, seed=seed, progress=say)
        except training.NotEnoughData as exc:  # e.g. a holdout of one outcome
            log.warning("Falling back to the prior: %s", exc)
    if trained is None:
        model = training.fit_prior(spec, rows, y)
        trained = Trained(model, Evaluation({"n_train": len(y), "n_test": 0}, []))
        activate = current is None or current.model.is_prior
        decision = (
            f"Cold start: {counts[0]} won and {counts[1]} lost deals (a real model needs "
            f"{training.MIN_CLASS_COUNT} of each, and both outcomes in its holdout), so the "
            "naive Bayes prior serves."
            if activate
            else "A prior never replaces a trained model."
        )
    else:
        activate, decision = _judge(trained, current, records, y)
    learnt = records[: len(records) - len(trained.holdout)]  # the holdout is the newest
    window = (learnt[0]["closed_at"], learnt[-1]["closed_at"]) if learnt else (None, None)
    with postgres.connection() as conn:
        registry.serialise(conn)
        now_active = registry.active_version(conn)
        if activate and now_active != active_then:
            activate = False
            decision = f"Version {now_active} was activated while this one trained; not activated."
        version = registry.save(conn, trained, window, counts, decision)
        if activate:
            registry.push(conn, version, "activate", "trained: " + decision)
    registry.forget()
    holdout_ids = [records[i]["opportunity_id"] for i in trained.holdout]
    metrics = trained.evaluation.metrics
    result = TrainResult(version, trained.model.kind, activate, decision, metrics, holdout_ids)
    log.info(result.summary())
    return result


def training_due(conn: Connection, now: datetime | None = None) -> str | None:
    """Why a training run is due now, or None."""
    settings = get_settings()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM fact_opportunity WHERE is_closed AND NOT is_deleted")
        closed = int(cur.fetchone()[0])
        cur.execute(
            "SELECT created_at, n_won + n_lost FROM model_version ORDER BY version DESC LIMIT 1"
        )
        last = cur.fetchone()
    if last is None:
        return "no model yet" if closed else None
    trained_at, seen = last
    if closed - seen >= settings.train_min_new_closed:
        return f"{closed - seen} deals closed since the last model"
    if schedule.next_fire(settings.train_schedule, trained_at) <= (now or datetime.now(UTC)):
        return f"TRAIN_SCHEDULE ({settings.train_schedule}) fired since the last model"
    return None


def score_open(conn: Connection) -> int:
    """Replace ``fact_prediction`` with the active model's score of every open opportunity."""
    served = registry.served()
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            f"""SELECT {FEATURE_COLUMNS} FROM fact_opportunity
                WHERE NOT is_closed AND NOT is_deleted ORDER BY opportunity_id"""
        )
        records = [dict(row) for row in cur.fetchall()]
    rows = [canonical(served.model.spec, r) for r in records]
    answers = [
        answer
        for start in range(0, len(rows), SCORE_CHUNK)
        for answer in served.model.predict(rows[start : start + SCORE_CHUNK])
    ]
    now = datetime.now(UTC)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM fact_prediction")
        execute_values(
            cur,
            """INSERT INTO fact_prediction (opportunity_id, model_version, is_prior, scored_at,
                   probability, predicted_outcome, factors) VALUES %s""",
            [
                (
                    r["opportunity_id"],
                    served.version,
                    served.model.is_prior,
                    now,
                    a["probability"],
                    a["predicted_outcome"],
                    json.dumps(a["factors"]),
                )
                for r, a in zip(records, answers, strict=True)
            ],
            page_size=1000,
        )
    return len(records)


def _scores_stale(conn: Connection, version: int) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            """SELECT (SELECT count(*) FROM fact_opportunity WHERE NOT is_closed AND NOT is_deleted)
                      <> (SELECT count(*) FROM fact_prediction),
                      EXISTS (SELECT 1 FROM fact_prediction WHERE model_version <> %s)""",
            (version,),
        )
        return any(cur.fetchone())


@dataclass
class StepResult:
    trained: TrainResult | None = None
    scored: int | None = None

    def summary(self) -> str:
        parts = [self.trained.summary()] if self.trained else []
        if self.scored is not None:
            parts.append(f"Scored {self.scored:,} open opportunities.")
        return " ".join(parts) or "Model step: nothing to do."


def after_load(loaded: int) -> StepResult:
    """The ETL's model step: train when due, then rescore open deals if anything changed."""
    result = StepResult()
    with postgres.connection() as conn:
        reason = training_due(conn)
    if reason is not None:
        log.info("Training is due: %s", reason)
        result.trained = train()
    with postgres.connection() as conn:
        version = registry.served().version
        if loaded or result.trained or _scores_stale(conn, version):
            result.scored = score_open(conn)
    log.info(result.summary())
    return result
