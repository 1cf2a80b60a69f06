"""``salespredict evaluate``: the training pipeline on any CSV export (a prospect's own CRM).

Column types are inferred: numbers stay numbers, text that reads as dates gives a day number
and a month, other text is categorical. Id columns (given, or text unique on every row) are
dropped. Columns whose names suggest they are only known once a deal has closed are named in a
warning: they flatter every metric and cannot be used to predict an open deal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from shared.errors import SalesPredictError
from shared.model import training
from shared.model.features import Feature, FeatureSpec, canonical

FOLDS = 5
DATE_SHARE = 0.95  # a text column is a date when this share of its values parse as one
POST_OUTCOME = re.compile(
    r"clos|cierre|cerrad|won|lost|win|loss|outcome|result|status|estado|stage|etapa|reason|"
    r"motivo|age|edad|duration|duracion|days_open",
    re.IGNORECASE,
)


class EvaluationInputError(SalesPredictError):
    """The CSV or the options given to ``salespredict evaluate`` cannot be used."""


@dataclass
class CsvEvaluation:
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _dates(column: pd.Series) -> pd.Series | None:
    values = column.dropna().astype(str)
    if values.empty or values.str.fullmatch(r"[-+]?\d+(\.\d+)?").all():
        return None
    parsed = pd.to_datetime(column, errors="coerce", format="mixed", utc=True)
    return parsed if parsed.notna().sum() >= DATE_SHARE * column.notna().sum() else None


def infer_spec(frame: pd.DataFrame) -> tuple[FeatureSpec, pd.DataFrame, list[str]]:
    """The spec of ``frame``'s columns, the frame with dates as ISO days, and the id columns."""
    features: list[Feature] = []
    ids: list[str] = []
    frame = frame.copy()
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_bool_dtype(column):
            features.append(Feature(name, "categorical", (name,)))
        elif pd.api.types.is_numeric_dtype(column):
            features.append(Feature(name, "numeric", (name,)))
        elif (dates := _dates(column)) is not None:
            frame[name] = dates.dt.strftime("%Y-%m-%d").where(dates.notna(), None)
            features.append(Feature(f"{name}:day", "numeric", (name,), "day_number"))
            features.append(Feature(f"{name}:month", "categorical", (name,), "month"))
        elif column.nunique(dropna=True) == len(column):
            ids.append(name)
        else:
            features.append(Feature(name, "categorical", (name,)))
    return FeatureSpec(tuple(features)), frame, ids


def evaluate_csv(
    path: Path,
    target: str,
    positive: Sequence[str],
    negative: Sequence[str] = (),
    ids: Sequence[str] = (),
    time: str | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> CsvEvaluation:
    """Metrics of the pipeline on a CSV file: 5-fold CV, or a time-ordered holdout on ``time``."""
    try:
        frame = pd.read_csv(path, dtype_backend="numpy_nullable")
    except (OSError, ValueError) as exc:
        raise EvaluationInputError(f"Cannot read {path}: {exc}") from exc
    frame = frame.astype({c: object for c in frame.columns if frame[c].dtype == "string"})
    missing = [c for c in (target, *ids, *([time] if time else [])) if c not in frame.columns]
    if missing:
        raise EvaluationInputError(
            f"{path} has no column(s) {', '.join(missing)}; it has {', '.join(frame.columns)}."
        )
    labels = frame[target].astype(str)
    if negative:
        frame = frame[labels.isin([*positive, *negative])]
        labels = labels[frame.index]
    y = labels.isin(positive).to_numpy(dtype=int)
    if not len(y) or y.min() == y.max():
        raise EvaluationInputError(
            f"Column {target} needs rows of both outcomes; "
            f"it has {labels.value_counts().to_dict()}."
        )
    order = None
    if time is not None:
        moments = pd.to_datetime(frame[time], errors="coerce", format="mixed", utc=True)
        if moments.isna().any():
            raise EvaluationInputError(f"Column {time} has {int(moments.isna().sum())} non-dates.")
        order = moments.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    features = frame.drop(columns=[target, *ids])
    spec, features, auto_ids = infer_spec(features)
    warnings = []
    if auto_ids:
        warnings.append(f"Dropped as ids (a different value on every row): {', '.join(auto_ids)}.")
    suspects = sorted({f.source[0] for f in spec.features if POST_OUTCOME.search(f.source[0])})
    if suspects:
        warnings.append(
            "These columns look like they are only known once a deal has closed: "
            f"{', '.join(suspects)}. They raise every metric here but cannot help predict an "
            "open deal; drop them from the export for an honest figure."
        )
    rows = [canonical(spec, record) for record in features.to_dict("records")]
    metrics = (
        _holdout(spec, rows, y, order, seed)
        if order is not None
        else _cv(spec, rows, y, seed, progress)
    )
    return CsvEvaluation(
        {**metrics, "rows": len(y), "positive_rate": round(float(y.mean()), 4)}, warnings
    )


def _holdout(
    spec: FeatureSpec, rows: list, y: np.ndarray, order: np.ndarray, seed: int
) -> dict[str, Any]:
    trained = training.fit(spec, rows, y, order=order, seed=seed, importance=False)
    return {
        **trained.evaluation.metrics,
        "validation": "time-ordered holdout (newest 20%)",
        "model": trained.model.kind,
    }


def _cv(
    spec: FeatureSpec, rows: list, y: np.ndarray, seed: int,
    progress: Callable[[int], None] | None,
) -> dict[str, Any]:  # fmt: skip
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    results, kinds = [], []
    for train, test in folds.split(np.zeros(len(y)), y):
        trained = training.fit(
            spec, [rows[i] for i in train], y[train], seed=seed,
            test=([rows[i] for i in test], y[test]), importance=False,
        )  # fmt: skip
        results.append(trained.evaluation.metrics)
        kinds.append(trained.model.kind)
        if progress is not None:
            progress(1)
    metrics: dict[str, Any] = {
        name: round(float(np.mean([r[name] for r in results])), 4) for name in training.METRIC_NAMES
    }
    metrics["n_train"] = int(np.mean([r["n_train"] for r in results]))
    metrics["n_test"] = int(np.mean([r["n_test"] for r in results]))
    metrics["validation"] = f"{FOLDS}-fold cross-validation (mean of folds)"
    metrics["model"] = max(set(kinds), key=kinds.count)
    return metrics
