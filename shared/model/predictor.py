"""A trained model as it is stored and served: its encoder, estimator, threshold and the typical
row its explanations start from.

Explanations (the factors of each prediction): for every feature, the probability with the
feature as it is minus the probability with that feature alone set to a neutral value (the
training median of a number; an unknown value of a category). Positive pushes towards Won.
The rows of a whole batch and all their variants go through the estimator in one
``predict_proba`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.model.features import Canonical, Encoder, FeatureSpec

PRIOR = "prior"
TOP_FACTORS = 3


@dataclass
class Model:
    kind: str  # "gradient_boosting", "logistic_regression" or "prior"
    encoder: Encoder
    estimator: Any  # a fitted scikit-learn classifier taking the encoder's matrix
    threshold: float
    reference: np.ndarray

    @property
    def spec(self) -> FeatureSpec:
        return self.encoder.spec

    @property
    def is_prior(self) -> bool:
        return self.kind == PRIOR

    def probabilities(self, rows: Sequence[Canonical]) -> np.ndarray:
        """P(Won) for each row."""
        if not rows:
            return np.empty(0)
        return np.asarray(self.estimator.predict_proba(self.encoder.transform(rows))[:, 1])

    def predict(self, rows: Sequence[Canonical], top: int = TOP_FACTORS) -> list[dict[str, Any]]:
        """Probability, predicted outcome and the top factors up and down, for each row."""
        if not rows:
            return []
        matrix = self.encoder.transform(rows)
        n, k = matrix.shape
        variants = np.repeat(matrix, k + 1, axis=0).reshape(n, k + 1, k)
        for j in range(k):
            variants[:, j + 1, j] = self.reference[j]
        p = np.asarray(self.estimator.predict_proba(variants.reshape(-1, k))[:, 1]).reshape(
            n, k + 1
        )
        contributions = p[:, :1] - p[:, 1:]
        names = self.spec.names
        answers = []
        for i, row in enumerate(rows):
            order = np.argsort(-contributions[i])
            up = [j for j in order[:top] if contributions[i, j] > 0]
            down = [j for j in order[::-1][:top] if contributions[i, j] < 0]
            probability = float(p[i, 0])
            answers.append(
                {
                    "probability": round(probability, 6),
                    "predicted_outcome": "Won" if probability >= self.threshold else "Lost",
                    "factors": {
                        "up": [_factor(names[j], row, contributions[i, j]) for j in up],
                        "down": [_factor(names[j], row, contributions[i, j]) for j in down],
                    },
                }
            )
        return answers


def _factor(name: str, row: Canonical, contribution: float) -> dict[str, Any]:
    return {"feature": name, "value": row[name], "contribution": round(float(contribution), 6)}
