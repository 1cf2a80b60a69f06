"""MongoDB documents -> reporting rows: pure functions, no I/O.

A document that cannot become a row raises ``Rejected`` with the reason; the ETL records it in
``etl_reject`` and goes on with the rest of its batch.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any, get_args

from pydantic import ValidationError

from shared.opportunities import CLOSED_STAGES, Stage, to_api

Row = tuple[Any, ...]

OPPORTUNITY_COLUMNS = (
    "opportunity_id", "seq", "external_id", "client_code", "business_unit", "opportunity_type",
    "region", "territory", "industry", "lead_source", "seller_id", "acv", "tcv", "margin",
    "stage", "is_closed", "is_won", "lost_reason", "notes", "expected_close_date",
    "expected_close_date_key", "created_at", "created_date_key", "updated_at", "closed_at",
    "closed_date_key", "attributes", "version", "is_deleted", "document",
)  # fmt: skip
STAGE_CHANGE_COLUMNS = (
    "event_id", "opportunity_id", "version", "event_type", "from_stage", "to_stage",
    "changed_at", "changed_date_key",
)  # fmt: skip
# dimension table -> (its key column, the fact column that fills it)
DIMENSIONS = {
    "dim_region": ("region_code", "region"),
    "dim_territory": ("territory_code", "territory"),
    "dim_business_unit": ("business_unit_code", "business_unit"),
    "dim_industry": ("industry_code", "industry"),
    "dim_lead_source": ("lead_source_code", "lead_source"),
    "dim_opportunity_type": ("opportunity_type_code", "opportunity_type"),
    "dim_seller": ("seller_id", "seller_id"),
    "dim_client": ("client_code", "client_code"),
}
STAGES = frozenset(get_args(Stage))


class Rejected(Exception):
    """A document that cannot be loaded; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def date_key(value: str | date | datetime | None) -> int | None:
    """``yyyymmdd`` of a date, a datetime (UTC) or their ISO text."""
    if value is None:
        return None
    text = value.isoformat() if isinstance(value, date) else value
    return int(text[:10].replace("-", ""))


def to_json(value: Any) -> str:
    """Canonical JSON (sorted keys; dates as text) for a jsonb column."""
    return json.dumps(value, default=str, sort_keys=True, ensure_ascii=False)


def _no_nul(text: str) -> str:
    if "\x00" in text or "\\u0000" in text:
        raise Rejected("contains a NUL character, which PostgreSQL cannot store")
    return text


def opportunity_row(doc: dict[str, Any]) -> Row:
    """The ``fact_opportunity`` row of an opportunity document."""
    try:
        api = to_api(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise Rejected(f"invalid opportunity: {problems}") from None
    except (KeyError, TypeError) as exc:
        raise Rejected(f"not an opportunity document: {type(exc).__name__} {exc}") from None
    seq = doc.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise Rejected(f"seq must be an integer, not {seq!r}")
    document = _no_nul(to_json(doc))
    return (
        api["opportunity_id"], seq, api["external_id"], api["client_code"],
        api["business_unit"], api["opportunity_type"], api["region"], api["territory"],
        api["industry"], api["lead_source"], api["seller_id"], api["acv"], api["tcv"],
        api["margin"], api["stage"], api["stage"] in CLOSED_STAGES, api["stage"] == "Won",
        api["lost_reason"], api["notes"], api["expected_close_date"],
        date_key(api["expected_close_date"]), api["created_at"], date_key(api["created_at"]),
        api["updated_at"], api["closed_at"], date_key(api["closed_at"]),
        to_json(api["attributes"]), api["version"], doc.get("deleted_at") is not None, document,
    )  # fmt: skip


def stage_change_row(event: dict[str, Any]) -> Row | None:
    """The ``fact_stage_change`` row of an event, or None for an event that moves no stage.

    An imported opportunity's history is unknown: its one row puts it at its final stage when
    it closed (or was created, if still open).
    """
    try:
        kind = event["type"]
        after = event["after"] or {}
        if kind in ("captured", "imported"):
            from_stage = None
            changed_at = event["at"]
            if kind == "imported":
                changed_at = after.get("closed_at") or after["created_at"]
        elif kind in ("stage_changed", "closed"):
            from_stage = (event.get("before") or {}).get("stage")
            changed_at = event["at"]
        else:
            return None
        to_stage = after["stage"]
        row = (
            event["_id"], event["opportunity_id"], int(event["version"]), kind, from_stage,
            to_stage, changed_at, date_key(changed_at),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise Rejected(f"not an event document: {type(exc).__name__} {exc}") from None
    if to_stage not in STAGES or (from_stage is not None and from_stage not in STAGES):
        raise Rejected(f"unknown stage in {from_stage!r} -> {to_stage!r}")
    if not isinstance(changed_at, datetime):
        raise Rejected(f"the event time must be a date, not {changed_at!r}")
    return row
