"""The feature spec: what the model sees of an opportunity, declared once for training and
prediction alike.

A feature has a name, a kind (``categorical`` or ``numeric``), the field paths it reads (dotted
for nested values such as ``attributes.segment``) and a transform of them. Only what is known
while a deal is open is used: never the stage, the closing date or the lost reason.

Rows are first turned into *canonical features* (name -> plain string or float, the same for an
API body, a stored document, a reporting row or a CSV line); the cache key hashes those. The
``Encoder`` then turns canonical rows into the float matrix the estimators take: categories
become their index in a vocabulary learnt from the training rows (unknown ones are missing).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any, Literal

import numpy as np

Kind = Literal["categorical", "numeric"]
Transform = Literal["value", "log", "ratio", "days_between", "month", "day_number", "cross"]
Canonical = dict[str, str | float | None]

# Above this many categories a field is target-encoded instead of used as native categories
# (HistGradientBoosting takes at most 255 per feature).
MAX_NATIVE_CATEGORIES = 250


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind
    source: tuple[str, ...]
    transform: Transform = "value"


@dataclass(frozen=True)
class FeatureSpec:
    features: tuple[Feature, ...]

    @functools.cached_property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self.features]

    @functools.cached_property
    def version(self) -> str:
        """A short hash of the spec: part of every cache key and model record."""
        text = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @classmethod
    def from_json(cls, data: Sequence[Mapping[str, Any]]) -> FeatureSpec:
        return cls(tuple(Feature(**{**f, "source": tuple(f["source"])}) for f in data))


def _categorical(name: str) -> Feature:
    return Feature(name, "categorical", (name,))


DEFAULT_SPEC = FeatureSpec(
    (
        *(
            _categorical(name)
            for name in (
                "client_code",
                "business_unit",
                "opportunity_type",
                "region",
                "territory",
                "industry",
                "lead_source",
                "seller_id",
            )
        ),
        Feature("acv", "numeric", ("acv",)),
        Feature("tcv", "numeric", ("tcv",)),
        Feature("margin", "numeric", ("margin",)),
        Feature("log_acv", "numeric", ("acv",), "log"),
        Feature("contract_years", "numeric", ("tcv", "acv"), "ratio"),
        Feature(
            "days_to_expected_close",
            "numeric",
            ("created_at", "expected_close_date"),
            "days_between",
        ),
        Feature("close_month", "categorical", ("expected_close_date",), "month"),
        # how well a business unit sells into an industry: a pair no single field shows
        Feature("business_unit_x_industry", "categorical", ("business_unit", "industry"), "cross"),
    )
)


def lookup(record: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of ``record`` (None when any step is missing)."""
    if path in record:
        return record[path]
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _day(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
        except ValueError:
            return None
    return None


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _compute(feature: Feature, record: Mapping[str, Any]) -> str | float | None:
    values = [lookup(record, path) for path in feature.source]
    match feature.transform:
        case "value":
            raw: Any = values[0]
        case "log":
            number = _number(values[0])
            raw = math.log1p(number) if number is not None and number >= 0 else None
        case "ratio":
            top, bottom = _number(values[0]), _number(values[1])
            raw = top / bottom if top is not None and bottom else None
        case "days_between":
            start, end = _day(values[0]), _day(values[1])
            raw = (end - start).days if start is not None and end is not None else None
        case "month":
            day = _day(values[0])
            raw = day.month if day is not None else None
        case "day_number":
            day = _day(values[0])
            raw = day.toordinal() if day is not None else None
        case "cross":
            parts = [_text(v) for v in values]
            raw = "|".join(p for p in parts if p is not None) if None not in parts else None
    if feature.kind == "categorical":
        return _text(raw)
    return _number(raw)


def canonical(spec: FeatureSpec, record: Mapping[str, Any]) -> Canonical:
    """The features of one record as plain values: strings for categories, floats or None."""
    return {f.name: _compute(f, record) for f in spec.features}


def feature_hash(features: Canonical) -> str:
    """A hash of canonical features that ignores key order and how a number was written."""
    text = json.dumps(features, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Encoder:
    """Canonical rows -> a float matrix; vocabularies learnt from the training rows."""

    spec: FeatureSpec
    vocabularies: dict[str, dict[str, int]] = field(default_factory=dict)

    def fit(self, rows: Iterable[Canonical]) -> Encoder:
        rows = list(rows)
        for f in self.spec.features:
            if f.kind == "categorical":
                seen = sorted({str(v) for row in rows if (v := row[f.name]) is not None})
                self.vocabularies[f.name] = {value: i for i, value in enumerate(seen)}
        return self

    def transform(self, rows: Sequence[Canonical]) -> np.ndarray:
        matrix = np.full((len(rows), len(self.spec.features)), np.nan)
        for j, f in enumerate(self.spec.features):
            vocabulary = self.vocabularies.get(f.name)
            for i, row in enumerate(rows):
                value = row[f.name]
                if value is None:
                    continue
                if vocabulary is not None:
                    code = vocabulary.get(str(value))
                    if code is not None:
                        matrix[i, j] = code
                else:
                    matrix[i, j] = value
        return matrix

    def columns(self) -> tuple[list[int], list[int], list[int]]:
        """Column indexes: native categories, target-encoded categories, numbers."""
        native, encoded, numeric = [], [], []
        for j, f in enumerate(self.spec.features):
            if f.kind == "numeric":
                numeric.append(j)
            elif len(self.vocabularies.get(f.name, {})) > MAX_NATIVE_CATEGORIES:
                encoded.append(j)
            else:
                native.append(j)
        return native, encoded, numeric
