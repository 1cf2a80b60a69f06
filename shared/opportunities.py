"""The opportunity: its schema (pydantic models, the single source of the API, the OpenAPI
document and validation) and the service that creates, reads, lists and updates it in MongoDB.

Storage, in the app's MongoDB database:

- ``opportunities``: one document per opportunity, ``_id`` = ``OP-000123``, plus ``seq`` (the
  number, for ordering and keyset pagination) and ``version`` (bumped by every change).
- ``events``: append-only; ``_id`` = ``OP-000123:<version>``, so a retried write can never append
  the same change twice. Each holds the fields before and after the change.
- ``counters``: the atomic sequence behind the ids.
- ``idempotency_keys``: ``Idempotency-Key`` -> the opportunity it created, purged after a TTL.

Every write path validates first and writes after, so a rejected request writes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError
from pymongo import DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from shared import catalogs
from shared.errors import (
    FieldProblem,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    from_validation_error,
)
from shared.settings import get_settings
from shared.stores import mongo

CLOSED_STAGES = ("Won", "Lost")
Stage = Literal["S1", "S2", "S3", "S4", "S5", "S6", "Won", "Lost"]

MAX_ATTRIBUTE_DEPTH = 5
MAX_ATTRIBUTE_KEYS = 200
MAX_ATTRIBUTE_KEY_LENGTH = 100
MAX_ATTRIBUTE_BYTES = 64 * 1024

Code = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
ClientCode = Annotated[str, StringConstraints(pattern=r"^CL-\d{5}$")]
Money = Annotated[float, Field(ge=0, le=1e13, allow_inf_nan=False)]
Text = Annotated[str, StringConstraints(max_length=10_000)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500)]
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=100)]


def attribute_problems(value: Any, path: str = "attributes") -> list[FieldProblem]:
    """Every unsafe key in a free-form map: ``$``-prefixed, dotted, NUL, too deep or too many."""
    problems: list[FieldProblem] = []
    count = 0

    def walk(node: Any, node_path: str, level: int) -> None:
        nonlocal count
        if not isinstance(node, dict | list):
            return
        if level > MAX_ATTRIBUTE_DEPTH:
            problems.append(FieldProblem(node_path, f"nested deeper than {MAX_ATTRIBUTE_DEPTH}"))
            return
        if isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{node_path}[{index}]", level + 1)
            return
        for key, item in node.items():
            count += 1
            key_path = f"{node_path}.{key}"
            if key.startswith("$"):
                problems.append(FieldProblem(key_path, "keys may not start with '$'"))
            elif "." in key or "\x00" in key:
                problems.append(FieldProblem(key_path, "keys may not contain '.' or NUL"))
            elif not key or len(key) > MAX_ATTRIBUTE_KEY_LENGTH:
                problems.append(
                    FieldProblem(key_path, f"keys must be 1-{MAX_ATTRIBUTE_KEY_LENGTH} chars")
                )
            else:
                walk(item, key_path, level + 1)

    walk(value, path, 1)
    if count > MAX_ATTRIBUTE_KEYS:
        problems.append(FieldProblem(path, f"more than {MAX_ATTRIBUTE_KEYS} keys in all"))
    if len(json.dumps(value, default=str)) > MAX_ATTRIBUTE_BYTES:
        problems.append(FieldProblem(path, f"larger than {MAX_ATTRIBUTE_BYTES} bytes as JSON"))
    return problems


class OpportunityFields(BaseModel):
    """What a seller records about an opportunity (PRODUCT.md section 3)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    client_code: ClientCode = Field(description="Customer code, e.g. CL-01169.")
    business_unit: Code = Field(description="Business unit code (catalog business_unit).")
    opportunity_type: Code = Field(description="Opportunity type code (catalog).")
    acv: Money = Field(description="Annual contract value, USD.")
    tcv: Money = Field(description="Total contract value, USD; at least the acv.")
    margin: float = Field(ge=0, le=1, allow_inf_nan=False, description="Profit margin, 0-1.")
    region: Code
    territory: Code
    industry: Code
    lead_source: Code
    seller_id: Code = Field(description="Seller code, e.g. NV-0.")
    expected_close_date: date
    stage: Stage = "S1"
    lost_reason: Reason | None = Field(
        None, validate_default=True, description="Required when the stage is Lost."
    )
    notes: Text = ""
    attributes: dict[str, JsonValue] = Field(
        default_factory=dict,
        description=(
            "Free-form custom fields. Keys may not start with '$' or contain '.' or NUL; "
            f"at most {MAX_ATTRIBUTE_DEPTH} levels, {MAX_ATTRIBUTE_KEYS} keys and "
            f"{MAX_ATTRIBUTE_BYTES} bytes."
        ),
    )

    @field_validator("tcv")
    @classmethod
    def _tcv_covers_acv(cls, tcv: float, info: ValidationInfo) -> float:
        acv = info.data.get("acv")
        if acv is not None and tcv < acv:
            raise ValueError(f"tcv ({tcv}) must be at least acv ({acv})")
        return tcv

    @field_validator("lost_reason")
    @classmethod
    def _reason_only_when_lost(cls, reason: str | None, info: ValidationInfo) -> str | None:
        stage = info.data.get("stage")
        if stage == "Lost" and not reason:
            raise ValueError("lost_reason is required when the stage is Lost")
        if stage is not None and stage != "Lost" and reason is not None:
            raise ValueError("lost_reason is only allowed when the stage is Lost")
        return reason

    @field_validator("attributes")
    @classmethod
    def _safe_attributes(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = attribute_problems(value)
        if problems:
            raise PydanticCustomError(
                "unsafe_attributes",
                "unsafe attribute keys: {detail}",
                {
                    "detail": "; ".join(f"{p.path}: {p.message}" for p in problems),
                    "problems": [(p.path, p.message) for p in problems],
                },
            )
        return value


class NewOpportunity(OpportunityFields):
    """The body of ``POST /api/opportunities``."""

    external_id: ExternalId | None = Field(
        None, description="The opportunity's id in the system it comes from; unique."
    )


class ImportedOpportunity(NewOpportunity):
    """A historical opportunity from a CSV import: it carries its own dates."""

    external_id: ExternalId
    created_at: datetime
    closed_at: datetime | None = None


class OpportunityPatch(BaseModel):
    """The body of ``PATCH /api/opportunities/{id}``: any subset of the fields."""

    model_config = ConfigDict(strict=True, extra="forbid")

    client_code: ClientCode | None = None
    business_unit: Code | None = None
    opportunity_type: Code | None = None
    acv: Money | None = None
    tcv: Money | None = None
    margin: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    region: Code | None = None
    territory: Code | None = None
    industry: Code | None = None
    lead_source: Code | None = None
    seller_id: Code | None = None
    expected_close_date: date | None = None
    stage: Stage | None = None
    lost_reason: Reason | None = None
    notes: Text | None = None
    attributes: dict[str, JsonValue] | None = None


class Opportunity(OpportunityFields):
    """An opportunity as stored and served."""

    model_config = ConfigDict(strict=False, extra="ignore")

    opportunity_id: str = Field(description="Server-assigned: OP-000123.")
    external_id: str | None = None
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None = None
    version: int = Field(ge=1, description="Bumped by every change; send it back in If-Match.")


class OpportunityPage(BaseModel):
    """One page of ``GET /api/opportunities``, newest first."""

    items: list[Opportunity]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end.")


class ListQuery(BaseModel):
    """The query parameters of ``GET /api/opportunities``."""

    model_config = ConfigDict(extra="forbid")

    stage: Stage | None = None
    region: Code | None = None
    seller_id: Code | None = None
    business_unit: Code | None = None
    created_from: datetime | None = Field(None, description="Inclusive, ISO 8601.")
    created_to: datetime | None = Field(None, description="Exclusive, ISO 8601.")
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = None


FIELD_NAMES = tuple(OpportunityFields.model_fields)
OPEN_STATE_FIELDS = tuple(n for n in FIELD_NAMES if n not in ("stage", "lost_reason"))


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class Collections:
    opportunities: Collection
    events: Collection
    counters: Collection
    idempotency_keys: Collection
    db: Database


_ready_lock = threading.Lock()
_ready: dict[tuple[int, str], Collections] = {}


def collections(db: Database | None = None) -> Collections:
    """The app's collections; the first call per database creates indexes and seeds catalogs.

    nx-27017 (the local server) fails inserts when a compound index includes ``_id``, so every
    index here is on ordinary fields; keyset pagination uses ``seq`` rather than ``_id``.
    """
    db = mongo.database() if db is None else db
    key = (id(db.client), db.name)
    ready = _ready.get(key)
    if ready is not None and ready.db.client is db.client:  # not a dead client's reused id
        return ready
    with _ready_lock:
        if key not in _ready or _ready[key].db.client is not db.client:
            result = Collections(db.opportunities, db.events, db.counters, db.idempotency_keys, db)
            result.opportunities.create_index("seq", unique=True)
            result.opportunities.create_index("external_id", unique=True, sparse=True)
            for name in ("updated_at", "created_at", "stage", "region", "seller_id"):
                result.opportunities.create_index(name)
            result.opportunities.create_index("business_unit")
            result.events.create_index("opportunity_id")
            result.events.create_index("recorded_at")
            result.idempotency_keys.create_index("created_at")
            catalogs.seed(db)
            _ready[key] = result
        return _ready[key]


def to_millis(moment: datetime) -> datetime:
    """``moment`` at MongoDB's precision (milliseconds), so what is read equals what was written."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def now_utc() -> datetime:
    """The current UTC time at MongoDB's precision."""
    return to_millis(datetime.now(UTC))


def format_id(seq: int) -> str:
    return f"OP-{seq:06d}"


def _as_datetime(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _to_document(fields: Mapping[str, Any]) -> dict[str, Any]:
    """API values -> BSON values (BSON has no date type: days are stored as UTC midnight)."""
    doc = dict(fields)
    if isinstance(doc.get("expected_close_date"), date) and not isinstance(
        doc["expected_close_date"], datetime
    ):
        doc["expected_close_date"] = _as_datetime(doc["expected_close_date"])
    return doc


def _fields_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document's editable fields, as API values."""
    fields = {name: doc[name] for name in FIELD_NAMES if name in doc}
    if isinstance(fields.get("expected_close_date"), datetime):
        fields["expected_close_date"] = fields["expected_close_date"].date()
    return fields


def to_api(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document as the API serves it (JSON-ready)."""
    return Opportunity.model_validate(
        {**doc, **_fields_of(doc), "opportunity_id": doc["_id"]}
    ).model_dump(mode="json")


def check_catalogs(fields: Mapping[str, Any], db: Database) -> list[FieldProblem]:
    """A problem for every categorical value that its catalog does not list."""
    known = catalogs.current(db)
    return [
        FieldProblem(name, f"unknown code {fields[name]!r}; GET /api/catalogs lists the codes")
        for name in catalogs.FIELDS
        if name in fields and name in known and fields[name] not in known[name]
    ]


def event_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The event of a stored document's current version, from the ``last_event`` it carries.

    Each write stores its event inside the document (atomically with the change) and then
    appends it to ``events``; if the process dies in between, ``repair_events`` appends it later.
    A first version's event holds the whole document as ``after``.
    """
    last = doc["last_event"]
    after = last["after"]
    if after is None:
        after = {k: v for k, v in doc.items() if k != "last_event"}
    return {
        "_id": f"{doc['_id']}:{doc['version']}",
        "opportunity_id": doc["_id"],
        "version": doc["version"],
        "type": last["type"],
        "at": last["at"],  # when it happened
        "recorded_at": doc["updated_at"],  # when it was written here (what the ETL follows)
        "before": last["before"],
        "after": after,
    }


def repair_events(cols: Collections, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append the events of ``docs``' current versions that ``events`` lacks; returns them.

    Documents without a readable ``last_event`` are left alone (the ETL rejects what it cannot
    load; a malformed document must not stop the repair of the others).
    """
    events = []
    for doc in docs:
        with contextlib.suppress(KeyError, TypeError):
            events.append(event_of(doc))
    have = {e["_id"] for e in cols.events.find({"_id": {"$in": [e["_id"] for e in events]}})}
    missing = [e for e in events if e["_id"] not in have]
    if missing:
        insert_events(cols, missing)
        count_changes(cols, len(missing))
    return missing


def insert_events(cols: Collections, events: list[dict[str, Any]]) -> None:
    """Append ``events``; one appended meanwhile by someone else (same id) is not an error."""
    try:
        cols.events.insert_many(events, ordered=False)
    except BulkWriteError as exc:
        if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
            raise


def new_document(
    fields: Mapping[str, Any],
    seq: int,
    now: datetime,
    *,
    kind: str = "captured",
    external_id: str | None = None,
    created_at: datetime | None = None,
    closed_at: datetime | None = None,
) -> dict[str, Any]:
    """The stored form of a new opportunity number ``seq``, carrying its first event."""
    closed = fields["stage"] in CLOSED_STAGES
    doc = {
        "_id": format_id(seq),
        "seq": seq,
        **_to_document(fields),
        "created_at": created_at or now,
        "updated_at": now,
        "closed_at": (closed_at or now) if closed else None,
        "version": 1,
        "last_event": {"type": kind, "at": now, "before": None, "after": None},
    }
    if external_id is not None:
        doc["external_id"] = external_id
    return doc


def reserve_ids(cols: Collections, count: int) -> int:
    """Atomically reserve ``count`` consecutive numbers; returns the first."""
    counter = cols.counters.find_one_and_update(
        {"_id": "opportunity"},
        {"$inc": {"seq": count}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    assert counter is not None  # an upsert returning the document after it always has one
    return int(counter["seq"]) - count + 1


# --------------------------------------------------------------------------- capture


@dataclass(frozen=True)
class Captured:
    opportunity: dict[str, Any]
    replayed: bool


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: bytes | str | Mapping[str, Any]) -> M:
    """Validate a JSON body or a map of query parameters (400 broken JSON, 422 by field)."""
    try:
        if isinstance(data, bytes | str):
            return model.model_validate_json(data)
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def create(new: NewOpportunity, idempotency_key: str | None = None) -> Captured:
    """Store a validated new opportunity and its ``captured`` event.

    With an ``idempotency_key``, a retry of the same request returns the first answer and stores
    nothing new; the same key with a different body is refused (422). Documents and events carry
    deterministic ids, so finishing an interrupted capture can never store anything twice.
    """
    cols = collections()
    problems = check_catalogs(new.model_dump(), cols.db)
    if problems:
        raise InvalidInput.of(problems)
    request_hash = ""
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 255:
            raise InvalidInput(
                "Bad Idempotency-Key.",
                errors=[FieldProblem("Idempotency-Key", "must be 1-255 characters")],
            )
        request_hash = hashlib.sha256(new.model_dump_json().encode()).hexdigest()
        record = cols.idempotency_keys.find_one({"_id": idempotency_key})
        if record is not None:
            return _replay(cols, new, record, request_hash)
    if new.external_id is not None:
        existing = cols.opportunities.find_one({"external_id": new.external_id}, {"_id": 1})
        if existing is not None:
            raise InvalidInput(
                "external_id already recorded.",
                errors=[FieldProblem("external_id", f"already recorded as {existing['_id']}")],
            )
    seq = reserve_ids(cols, 1)
    if idempotency_key is not None:
        try:
            cols.idempotency_keys.insert_one(
                {"_id": idempotency_key, "hash": request_hash, "seq": seq, "created_at": now_utc()}
            )
        except DuplicateKeyError:  # a concurrent request with the same key got there first
            record = cols.idempotency_keys.find_one({"_id": idempotency_key})
            return _replay(cols, new, record, request_hash)
    try:
        return Captured(_store_new(cols, new, seq), replayed=False)
    except InvalidInput:  # its external_id was stored meanwhile: forget the key too
        if idempotency_key is not None:
            cols.idempotency_keys.delete_one({"_id": idempotency_key})
        raise


def _replay(
    cols: Collections, new: NewOpportunity, record: dict[str, Any] | None, request_hash: str
) -> Captured:
    """The first answer to an Idempotency-Key, finishing its capture if it was interrupted."""
    if record is None or record["hash"] != request_hash:
        raise InvalidInput(
            "This Idempotency-Key was used for a different request.",
            errors=[FieldProblem("Idempotency-Key", "already used with another body")],
        )
    first = cols.events.find_one({"_id": f"{format_id(record['seq'])}:1"})
    if first is not None:
        return Captured(to_api(first["after"]), replayed=True)
    return Captured(_store_new(cols, new, record["seq"]), replayed=True)


def _store_new(cols: Collections, new: NewOpportunity, seq: int) -> dict[str, Any]:
    fields = new.model_dump(exclude={"external_id"})
    doc = new_document(fields, seq, now_utc(), external_id=new.external_id)
    try:
        cols.opportunities.insert_one(doc)
    except DuplicateKeyError:
        stored = cols.opportunities.find_one({"_id": doc["_id"]})
        if stored is None:  # the duplicate was the external_id, stored by a concurrent request
            raise InvalidInput(
                "external_id already recorded.",
                errors=[FieldProblem("external_id", "already recorded")],
            ) from None
        doc = stored
    try:
        with contextlib.suppress(DuplicateKeyError):
            cols.events.insert_one(event_of(doc))
    finally:
        count_changes(cols)
    return to_api(doc)


# --------------------------------------------------------------------------- read


def _live(cols: Collections, opp_id: str, expected_version: int | None = None) -> dict[str, Any]:
    """The stored document (404 if absent or deleted; 412 if not at ``expected_version``)."""
    doc = cols.opportunities.find_one({"_id": opp_id})
    if doc is None or doc.get("deleted_at") is not None:
        raise NotFound(f"No opportunity {opp_id}.")
    if expected_version is not None and doc["version"] != expected_version:
        raise PreconditionFailed(
            f"{opp_id} is at version {doc['version']}, not {expected_version}; "
            "read it again and reapply your change."
        )
    return doc


def get(opp_id: str) -> dict[str, Any]:
    return to_api(_live(collections(), opp_id))


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, value = text.split(":", 1)
        if prefix != "seq":
            raise ValueError(prefix)
        return int(value)
    except ValueError:
        raise InvalidInput(
            "Bad cursor.", errors=[FieldProblem("cursor", "not a cursor this API returned")]
        ) from None


def list_page(query: ListQuery) -> dict[str, Any]:
    """One page of opportunities matching ``query``, newest first (keyset pagination)."""
    flt: dict[str, Any] = {
        name: value
        for name in ("stage", "region", "seller_id", "business_unit")
        if (value := getattr(query, name)) is not None
    }
    flt["deleted_at"] = None
    created: dict[str, datetime] = {}
    if query.created_from is not None:
        created["$gte"] = aware(query.created_from)
    if query.created_to is not None:
        created["$lt"] = aware(query.created_to)
    if created:
        flt["created_at"] = created
    if query.cursor is not None:
        flt["seq"] = {"$lt": _decode_cursor(query.cursor)}
    docs = list(
        collections().opportunities.find(flt).sort("seq", DESCENDING).limit(query.limit + 1)
    )
    more = len(docs) > query.limit
    docs = docs[: query.limit]
    return {
        "items": [to_api(doc) for doc in docs],
        "next_cursor": _encode_cursor(docs[-1]["seq"]) if more else None,
    }


def aware(moment: datetime) -> datetime:
    """``moment`` with UTC assumed when it carries no time zone."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- update

MAX_UPDATE_ATTEMPTS = 5


def parse_if_match(header: str | None) -> int | None:
    """The version in an ``If-Match`` header (``"3"``, ``W/"3"`` or ``3``); ``*`` means any."""
    if header is None or header.strip() == "*":
        return None
    value = header.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise PreconditionFailed(f"If-Match must be a version this API returned, not {header!r}.")
    return int(value)


def update(opp_id: str, patch: OpportunityPatch, expected_version: int | None) -> dict[str, Any]:
    """Apply ``patch``; with ``expected_version``, refuse (412) if the stored version differs.

    Moving to Won or Lost sets ``closed_at``; moving back to an open stage clears it. The change
    and an event with the fields before and after it are written; a no-op changes nothing.
    """
    nulls = [name for name in patch.model_fields_set if getattr(patch, name) is None]
    if nulls:
        raise InvalidInput.of([FieldProblem(name, "may not be null") for name in sorted(nulls)])
    cols = collections()
    changes = patch.model_dump(exclude_unset=True)
    for _ in range(MAX_UPDATE_ATTEMPTS):
        doc = _live(cols, opp_id, expected_version)
        current = _fields_of(doc)
        merged = {**current, **changes}
        if merged["stage"] != "Lost" and "lost_reason" not in changes:
            merged["lost_reason"] = None
        try:
            valid = OpportunityFields.model_validate(merged).model_dump()
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        problems = check_catalogs({k: valid[k] for k in changes if k in valid}, cols.db)
        if problems:
            raise InvalidInput.of(problems)
        changed = {k: v for k, v in valid.items() if current.get(k) != v}
        if not changed:
            return to_api(doc)
        now = now_utc()
        kind = "updated"
        if "stage" in changed:
            kind = "closed" if valid["stage"] in CLOSED_STAGES else "stage_changed"
            closed_at = now if valid["stage"] in CLOSED_STAGES else None
            if closed_at != doc.get("closed_at"):
                changed["closed_at"] = closed_at
        updated = _compare_and_swap(cols, doc, _to_document(changed), kind, now)
        if updated is not None:
            return to_api(updated)
        if expected_version is not None:
            raise PreconditionFailed(f"{opp_id} changed while this update was applied.")
    raise PreconditionFailed(f"{opp_id} is changing too often; retry.")


def delete(opp_id: str, expected_version: int | None) -> None:
    """Soft-delete: the document stays (with ``deleted_at``) so the ETL can mark its rows."""
    cols = collections()
    for _ in range(MAX_UPDATE_ATTEMPTS):
        doc = _live(cols, opp_id, expected_version)
        now = now_utc()
        if _compare_and_swap(cols, doc, {"deleted_at": now}, "deleted", now) is not None:
            return
        if expected_version is not None:
            raise PreconditionFailed(f"{opp_id} changed while it was being deleted.")
    raise PreconditionFailed(f"{opp_id} is changing too often; retry.")


def next_version(
    doc: dict[str, Any], changes: dict[str, Any], kind: str, now: datetime
) -> dict[str, Any]:
    """``doc`` with stored ``changes`` applied as its next version, carrying that change's event.

    A change that closes the deal also keeps ``open_state``: the fields as they were while it
    was open, what a model may learn from (a change made while closing is known only then).
    Reopening the deal drops it.
    """
    result = dict(doc)
    result.update(changes, updated_at=now, version=doc["version"] + 1)
    if "stage" in changes:
        if changes["stage"] not in CLOSED_STAGES:
            result.pop("open_state", None)
        elif doc.get("stage") not in CLOSED_STAGES:
            result["open_state"] = {k: doc[k] for k in OPEN_STATE_FIELDS if k in doc}
    result["last_event"] = {
        "type": kind,
        "at": now,
        "before": {k: doc.get(k) for k in changes},
        "after": changes,
    }
    return result


def _compare_and_swap(
    cols: Collections, doc: dict[str, Any], changes: dict[str, Any], kind: str, now: datetime
) -> dict[str, Any] | None:
    """Write ``changes`` as the next version of ``doc`` unless someone else wrote it first.

    A whole-document replacement guarded by the version: nx-27017 stores a top-level datetime
    given to ``$set`` as a string, while a replacement keeps its BSON types. The change's event
    rides in the document (``last_event``) and is then appended to ``events``.
    """
    if "last_event" in doc:  # the previous change's event, if a crash kept it from ``events``
        with contextlib.suppress(DuplicateKeyError):
            cols.events.insert_one(event_of(doc))
    replacement = next_version(doc, changes, kind, now)
    del replacement["_id"]
    updated = cols.opportunities.find_one_and_replace(
        {"_id": doc["_id"], "version": doc["version"]},
        replacement,
        return_document=ReturnDocument.AFTER,
    )
    if updated is not None:
        try:
            with contextlib.suppress(DuplicateKeyError):
                cols.events.insert_one(event_of(updated))
        finally:
            count_changes(cols)
    return updated


# --------------------------------------------------------------------------- housekeeping


def purge_idempotency_keys(older_than: timedelta | None = None) -> int:
    """Delete Idempotency-Key records past their TTL; returns how many were deleted."""
    ttl = older_than or timedelta(hours=get_settings().idempotency_key_ttl_hours)
    result = collections().idempotency_keys.delete_many({"created_at": {"$lt": now_utc() - ttl}})
    return int(result.deleted_count)


def insert_many(
    cols: Collections, docs: list[dict[str, Any]], events: list[dict[str, Any]] | None = None
) -> None:
    """Bulk-store new documents, then their events: the current version's of each document,
    or ``events`` (a whole history, for generated data)."""
    if docs:
        try:
            cols.opportunities.insert_many(docs, ordered=False)
            cols.events.insert_many(events or [event_of(d) for d in docs], ordered=False)
        finally:  # count even a partial write: the ETL must look
            count_changes(cols, len(docs))


def count_changes(cols: Collections, n: int = 1) -> None:
    """Count ``n`` finished writes. The ETL skips its reads while this count stands still;
    writers count *after* writing, so every write a count covers is already readable."""
    cols.counters.update_one({"_id": "changes"}, {"$inc": {"n": n}}, upsert=True)


def changes(cols: Collections) -> int:
    """How many writes have been counted so far."""
    counter = cols.counters.find_one({"_id": "changes"})
    return int(counter["n"]) if counter else 0
