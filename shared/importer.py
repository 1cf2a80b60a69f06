"""Bulk import of historical opportunities from a CSV export, through the capture validation.

A mapping file (TOML) names the opportunity field each CSV column fills::

    ignore = ["edad_oferta"]            # columns to leave out

    [columns]
    numero_opportunidad = "external_id" # the source system's id: re-runs skip rows already in
    fecha_cierre_oportunidad = ["expected_close_date", "closed_at"]

    [defaults]
    lost_reason = "not recorded"        # for fields the file does not have

``closed_at`` and ``lost_reason`` apply only to rows whose stage is closed (Lost, for the reason).
Without a mapping, columns must carry the field names. Rows are validated exactly like
``POST /api/opportunities`` (plus ``external_id`` and ``created_at``, which an import must have);
invalid rows are reported with their line and reason and nothing of them is stored.
"""

from __future__ import annotations

import csv
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError
from tqdm import tqdm

from shared import opportunities
from shared.errors import FieldProblem, SalesPredictError, from_validation_error
from shared.opportunities import CLOSED_STAGES, ImportedOpportunity

TARGETS = frozenset(ImportedOpportunity.model_fields)
BATCH_SIZE = 1000


class ImportFileError(SalesPredictError):
    """The CSV or mapping file cannot be used as a whole; the message says why."""


@dataclass(frozen=True)
class Mapping:
    columns: dict[str, tuple[str, ...]]
    ignore: frozenset[str] = frozenset()
    defaults: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, header: list[str]) -> Mapping:
        return cls({name: (name,) for name in header})

    @classmethod
    def load(cls, path: Path) -> Mapping:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ImportFileError(f"Cannot read mapping {path}: {exc}") from exc
        columns = {
            str(column): (target,) if isinstance(target, str) else tuple(target)
            for column, target in data.get("columns", {}).items()
        }
        mapping = cls(columns, frozenset(data.get("ignore", [])), dict(data.get("defaults", {})))
        named = {t for targets in columns.values() for t in targets} | set(mapping.defaults)
        unknown = sorted(named - TARGETS)
        if unknown:
            raise ImportFileError(
                f"Mapping {path} names unknown field(s) {', '.join(unknown)}; "
                f"fields: {', '.join(sorted(TARGETS))}."
            )
        return mapping

    def check_header(self, header: list[str]) -> None:
        missing = [c for c in self.columns if c not in header]
        unmapped = [c for c in header if c not in self.columns and c not in self.ignore]
        if missing or unmapped:
            raise ImportFileError(
                "The CSV header does not match the mapping: "
                + "; ".join(
                    part
                    for part in (
                        f"missing column(s) {', '.join(missing)}" if missing else "",
                        f"unmapped column(s) {', '.join(unmapped)} (map them or list them "
                        "under ignore)"
                        if unmapped
                        else "",
                    )
                    if part
                )
            )

    def apply(self, row: dict[str, str]) -> dict[str, Any]:
        record: dict[str, Any] = dict(self.defaults)
        for column, targets in self.columns.items():
            value = row.get(column)
            if value is None or value == "":
                continue
            for target in targets:
                record[target] = value
        closed = record.get("stage") in CLOSED_STAGES
        if not closed:
            record.pop("closed_at", None)
        if record.get("stage") != "Lost" and "lost_reason" not in {
            t for c, ts in self.columns.items() if row.get(c) for t in ts
        }:
            record.pop("lost_reason", None)
        return record


@dataclass
class Rejected:
    line: int
    external_id: str | None
    problems: list[FieldProblem]

    @property
    def reason(self) -> str:
        return "; ".join(f"{p.path}: {p.message}" for p in self.problems)


@dataclass
class ImportSummary:
    rows: int = 0
    imported: int = 0
    skipped: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def reasons(self) -> Counter[str]:
        """How many rows were rejected for each field."""
        return Counter(p.path for r in self.rejected for p in r.problems)

    def report(self, examples: int = 5) -> str:
        lines = [
            f"{self.rows:,} row(s) read: {self.imported:,} imported, {self.skipped:,} already "
            f"imported (skipped), {len(self.rejected):,} rejected."
        ]
        if self.rejected:
            lines.append("Rejected rows by field:")
            lines += [f"  {count:>7,}  {path}" for path, count in self.reasons().most_common()]
            lines.append("First rejected rows:")
            lines += [
                f"  line {r.line} ({r.external_id or 'no id'}): {r.reason}"
                for r in self.rejected[:examples]
            ]
        return "\n".join(lines)


def _validate(record: dict[str, Any], db: Any) -> ImportedOpportunity | list[FieldProblem]:
    try:
        item = ImportedOpportunity.model_validate(record, strict=False)
    except ValidationError as exc:
        return from_validation_error(exc).errors
    problems = opportunities.check_catalogs(item.model_dump(), db)
    return problems or item


def _batches(reader: csv.DictReader, size: int) -> Iterator[list[tuple[int, dict[str, str]]]]:
    batch: list[tuple[int, dict[str, str]]] = []
    for row in reader:
        batch.append((reader.line_num, row))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _existing(cols: opportunities.Collections, external_ids: list[str]) -> set[str]:
    """The ids already imported; an import interrupted between a document and its event gets
    the missing event now, so a re-run leaves every imported opportunity complete."""
    docs = list(cols.opportunities.find({"external_id": {"$in": external_ids}}))
    opportunities.repair_events(cols, docs)
    return {d["external_id"] for d in docs}


def import_rows(
    handle: TextIO,
    mapping: Mapping | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    progress: tqdm | None = None,
) -> ImportSummary:
    """Import every row of an open CSV file; rows already imported (by external_id) are skipped."""
    reader = csv.DictReader(handle)
    header = list(reader.fieldnames or [])
    if not header:
        raise ImportFileError("The CSV file is empty: it has no header row.")
    mapping = mapping or Mapping.identity(header)
    mapping.check_header(header)
    id_column = next((c for c, ts in mapping.columns.items() if "external_id" in ts), None)
    if id_column is None:
        raise ImportFileError("No column maps to external_id; an import needs the source ids.")
    cols = opportunities.collections()
    summary = ImportSummary()
    seen: set[str] = set()
    for batch in _batches(reader, batch_size):
        summary.rows += len(batch)
        valid: list[ImportedOpportunity] = []
        for line, row in batch:
            result = _validate(mapping.apply(row), cols.db)
            record_id = result.external_id if isinstance(result, ImportedOpportunity) else None
            if isinstance(result, list):
                summary.rejected.append(Rejected(line, row.get(id_column), result))
            elif record_id in seen:
                problem = FieldProblem("external_id", "appears more than once in the file")
                summary.rejected.append(Rejected(line, record_id, [problem]))
            else:
                seen.add(result.external_id)
                valid.append(result)
        existing = _existing(cols, [item.external_id for item in valid])
        summary.skipped += len(existing)
        new = [item for item in valid if item.external_id not in existing]
        if new:
            first = opportunities.reserve_ids(cols, len(new))
            now = opportunities.now_utc()
            docs = [
                opportunities.new_document(
                    item.model_dump(exclude={"external_id", "created_at", "closed_at"}),
                    first + offset,
                    now,
                    kind="imported",
                    external_id=item.external_id,
                    created_at=opportunities.aware(item.created_at),
                    closed_at=opportunities.aware(item.closed_at) if item.closed_at else None,
                )
                for offset, item in enumerate(new)
            ]
            opportunities.insert_many(cols, docs)
            summary.imported += len(new)
        if progress is not None:
            progress.update(len(batch))
    return summary
