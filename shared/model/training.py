"""Training and evaluation: pure functions, rows and outcomes in, a ``Model`` and metrics out.

Closed deals are split by time: the newest 20 % are the holdout, the rest is the development
part. Two candidates are fitted on it, a gradient-boosting model with native categories and a
regularised logistic regression (categories of more than ``MAX_NATIVE_CATEGORIES`` values, such
as clients, are target-encoded with cross-fitting in both). Each is calibrated by Platt scaling
on 3-fold out-of-fold scores, then refitted on the whole development part
(``CalibratedClassifierCV(ensemble=False)``); those out-of-fold scores are also the validation
data that pick the threshold (the most accurate one). The candidate with the better holdout ROC
AUC is kept. With fewer
than ``MIN_CLASS_COUNT`` won or lost deals a smoothed naive Bayes prior over the categorical
fields serves instead (the way Odoo scores leads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.naive_bayes import CategoricalNB
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler, TargetEncoder

from shared.errors import SalesPredictError
from shared.model.features import Canonical, Encoder, FeatureSpec
from shared.model.predictor import PRIOR, Model

MIN_CLASS_COUNT = 40
HOLDOUT_FRACTION = 0.2
CALIBRATION_FOLDS = 3
CALIBRATION_BINS = 10
METRIC_NAMES = ("roc_auc", "pr_auc", "brier", "log_loss", "accuracy", "f1", "threshold")


class NotEnoughData(SalesPredictError):
    """Too few closed deals of each outcome to split into train, validation and holdout."""


@dataclass
class Evaluation:
    metrics: dict[str, float | int]
    calibration: list[dict[str, float | None]]


@dataclass
class Trained:
    """A fitted model with how it did on its holdout, and the holdout itself."""

    model: Model
    evaluation: Evaluation
    candidates: dict[str, float] = field(default_factory=dict)
    importance: dict[str, float] = field(default_factory=dict)
    holdout: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=int))  # row indexes


# ------------------------------------------------------------------------------- metrics


def calibration_table(y: np.ndarray, p: np.ndarray) -> list[dict[str, float | None]]:
    """Ten equal-width bins of predicted probability: mean predicted, observed win rate, count."""
    bins = np.minimum((p * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    table = []
    for b in range(CALIBRATION_BINS):
        inside = bins == b
        count = int(inside.sum())
        table.append(
            {
                "bin": b,
                "from": b / CALIBRATION_BINS,
                "to": (b + 1) / CALIBRATION_BINS,
                "count": count,
                "mean_predicted": round(float(p[inside].mean()), 4) if count else None,
                "observed_win_rate": round(float(y[inside].mean()), 4) if count else None,
            }
        )
    return table


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float, n_train: int) -> Evaluation:
    """The metrics of probabilities ``p`` against outcomes ``y`` (1 = Won)."""
    predicted = (p >= threshold).astype(int)
    both = len(set(y.tolist())) == 2
    metrics: dict[str, float | int] = {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "accuracy": float(accuracy_score(y, predicted)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "threshold": float(threshold),
        "n_train": n_train,
        "n_test": len(y),
    }
    return Evaluation(
        {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
        calibration_table(y, p),
    )


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability cut with the best accuracy on ``y`` (ties: the one nearest 0.5)."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    scores = [(accuracy_score(y, p >= t), -abs(t - 0.5)) for t in grid]
    return float(grid[max(range(len(grid)), key=lambda i: scores[i])])


# ---------------------------------------------------------------------------- estimators


class PriorModel(ClassifierMixin, BaseEstimator):
    """Naive Bayes over the categorical columns, Laplace-smoothed; a smoothed base rate when a
    class has no example yet (an empty history answers 0.5)."""

    def __init__(self, columns: Sequence[int] = (), sizes: Sequence[int] = ()) -> None:
        self.columns = columns
        self.sizes = sizes

    def _codes(self, X: np.ndarray) -> np.ndarray:
        codes = X[:, list(self.columns)]
        unknown = np.asarray(self.sizes, dtype=float)  # one extra code per column: unseen
        return np.where(np.isnan(codes), unknown, codes).astype(int)

    def fit(self, X: np.ndarray, y: np.ndarray) -> PriorModel:
        self.classes_ = np.array([0, 1])
        won, n = int(np.sum(y)), len(y)
        self.base_rate_ = (won + 1) / (n + 2)
        self.nb_: CategoricalNB | None = None
        if 0 < won < n and self.columns:
            self.nb_ = CategoricalNB(alpha=1.0, min_categories=[s + 1 for s in self.sizes])
            self.nb_.fit(self._codes(X), y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.nb_ is None:
            won = np.full(len(X), self.base_rate_)
            return np.column_stack([1 - won, won])
        return np.asarray(self.nb_.predict_proba(self._codes(X)))


def _encode_high(columns: list[int], seed: int) -> tuple[str, Any, list[int]]:
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return ("target", TargetEncoder(target_type="binary", cv=folds), columns)


def candidates(encoder: Encoder, seed: int) -> dict[str, Pipeline]:
    """The two estimators compared on every training run, unfitted."""
    native, encoded, numeric = encoder.columns()
    # ColumnTransformer puts transformed columns first, then the rest in their order
    rest = [j for j in range(len(encoder.spec.features)) if j not in encoded]
    categorical = [False] * len(encoded) + [j in native for j in rest]
    boosting = Pipeline(
        [
            ("encode", ColumnTransformer([_encode_high(encoded, seed)], remainder="passthrough")),
            (
                "model",
                HistGradientBoostingClassifier(
                    learning_rate=0.05,
                    max_iter=1000,
                    max_leaf_nodes=8,  # shallow trees: effects are mostly additive
                    categorical_features=np.array(categorical, dtype=bool),
                    l2_regularization=1.0,
                    early_stopping=True,
                    validation_fraction=0.15,
                    n_iter_no_change=20,
                    random_state=seed,
                ),
            ),
        ]
    )
    numeric_steps = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    logistic = Pipeline(
        [
            (
                "encode",
                ColumnTransformer(
                    [
                        _encode_high(encoded, seed),
                        (
                            "onehot",
                            OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5),
                            native,
                        ),
                        ("numeric", numeric_steps, numeric),
                    ]
                ),
            ),
            ("model", LogisticRegression(C=0.5, max_iter=2000)),
        ]
    )
    return {"gradient_boosting": boosting, "logistic_regression": logistic}


def _reference(encoder: Encoder, X: np.ndarray) -> np.ndarray:
    """The neutral row explanations compare with: the median of each number, and an unknown
    value for each category (what the model answers for a client or seller it has never seen)."""
    reference = np.full(X.shape[1], np.nan)
    for j, f in enumerate(encoder.spec.features):
        column = X[:, j][~np.isnan(X[:, j])]
        if f.kind == "numeric" and len(column):
            reference[j] = np.median(column)
    return reference


def fit_prior(spec: FeatureSpec, rows: Sequence[Canonical], y: np.ndarray) -> Model:
    """The cold-start model, fitted on every closed deal there is (possibly none)."""
    encoder = Encoder(spec).fit(rows)
    X = encoder.transform(rows)
    columns = [j for j, f in enumerate(spec.features) if f.kind == "categorical"]
    sizes = [len(encoder.vocabularies[spec.features[j].name]) for j in columns]
    estimator = PriorModel(columns, sizes).fit(X, y)
    reference = _reference(encoder, X) if len(rows) else np.full(len(spec.features), np.nan)
    return Model(PRIOR, encoder, estimator, 0.5, reference)


# ------------------------------------------------------------------------------ training


def _newest(order: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indexes of the older rows and of the newest ``fraction`` of them, by ``order``."""
    ranked = np.argsort(order, kind="stable")
    cut = len(order) - max(1, round(len(order) * fraction))
    return ranked[:cut], ranked[cut:]


def _check_classes(y: np.ndarray, where: str) -> None:
    if len(set(y.tolist())) < 2:
        raise NotEnoughData(f"The {where} holds only one outcome; more closed deals are needed.")


def fit(
    spec: FeatureSpec,
    rows: Sequence[Canonical],
    y: np.ndarray,
    order: np.ndarray | None = None,
    seed: int = 0,
    test: tuple[Sequence[Canonical], np.ndarray] | None = None,
    progress: Callable[[str], None] | None = None,
    importance: bool = True,
) -> Trained:
    """Train both candidates and keep the better.

    The holdout is ``test`` when given (cross-validation), else the newest 20 % of the rows by
    ``order`` (their times).
    """
    say = progress or (lambda _: None)
    rows = list(rows)
    hold = np.empty(0, dtype=int)
    if test is None:
        if order is None:
            raise ValueError("fit needs the rows' times (order) or a test set")
        dev, hold = _newest(order, HOLDOUT_FRACTION)
        test_rows, test_y = [rows[i] for i in hold], y[hold]
        rows, y = [rows[i] for i in dev], y[dev]
    else:
        test_rows, test_y = list(test[0]), test[1]
    for part, where in ((y, "development part"), (test_y, "holdout")):
        _check_classes(part, where)
    encoder = Encoder(spec).fit(rows)
    X = encoder.transform(rows)
    X_test = encoder.transform(test_rows)
    reference = _reference(encoder, X)
    folds = StratifiedKFold(CALIBRATION_FOLDS, shuffle=True, random_state=seed)
    scored: dict[str, tuple[float, Model, Evaluation]] = {}
    for name, estimator in candidates(encoder, seed).items():
        say(f"fitting {name}")
        calibrated = CalibratedClassifierCV(
            estimator, method="sigmoid", cv=folds, ensemble=False
        ).fit(X, y)
        # the same folds' out-of-fold scores (decision function: what the sigmoid was fitted
        # on), calibrated: the validation data of the threshold
        oof = cross_val_predict(estimator, X, y, cv=folds, method="decision_function")
        sigmoid = calibrated.calibrated_classifiers_[0].calibrators[0]
        threshold = best_threshold(y, sigmoid.predict(oof))
        model = Model(name, encoder, calibrated, threshold, reference)
        evaluation = evaluate(test_y, model.probabilities(test_rows), threshold, len(y))
        scored[name] = (float(evaluation.metrics["roc_auc"]), model, evaluation)
    best = max(scored, key=lambda name: scored[name][0])
    _, model, evaluation = scored[best]
    weights: dict[str, float] = {}
    if importance:
        say("measuring feature importance")
        permuted = permutation_importance(
            model.estimator, X_test, test_y, scoring="roc_auc", n_repeats=3, random_state=seed
        )
        weights = {
            name: round(float(value), 4)
            for name, value in zip(spec.names, permuted.importances_mean, strict=True)
        }
    return Trained(
        model,
        evaluation,
        candidates={name: auc for name, (auc, _, _) in scored.items()},
        importance=weights,
        holdout=hold,
    )


def enough_data(y: np.ndarray) -> bool:
    """Whether a real model may be trained: at least ``MIN_CLASS_COUNT`` won and lost deals."""
    won = int(np.sum(y))
    return min(won, len(y) - won) >= MIN_CLASS_COUNT
