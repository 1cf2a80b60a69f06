"""Dummy company history: ``salespredict seed`` and the demo data of ``make run``.

A made-up company (clients, sellers with different skill, territories inside regions) records
opportunities over the past three years. Each one is won with a ground-truth probability that
depends on its fields in non-trivial ways (a seller's skill, a client's loyalty, the fit of an
industry with a business unit, a penalty above a deal size, the margin asked, lead sources,
opportunity types, regions, long contracts sold by good sellers), moves through the stages over
time and closes as Won or Lost, or is still open today. The outcome is drawn from that
probability: the draw is the only noise, so the truth is what a perfect model would learn.

Everything goes through the opportunity service's own schema, catalogs and documents, in bulk,
with every stage change as an event. The ground-truth probability is kept apart from the
opportunity, in the ``ground_truth`` collection, so a benchmark can compute the best
achievable AUC while no model can see it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared import catalogs, opportunities
from shared.opportunities import NewOpportunity

LOST_REASONS = ("price", "competitor", "no budget", "timing", "no decision")
YEARS_OF_HISTORY = 3
BATCH_SIZE = 500


@dataclass
class SeedSummary:
    created: int = 0
    won: int = 0
    lost: int = 0
    open: int = 0

    def report(self) -> str:
        return (
            f"{self.created:,} opportunities generated: {self.won:,} won, {self.lost:,} lost, "
            f"{self.open:,} still open."
        )


class Company:
    """The fixed traits of a made-up company, drawn from ``rng``."""

    def __init__(self, rng: random.Random, n_clients: int) -> None:
        codes = catalogs.default_catalogs()
        self.codes = codes
        regions = codes["region"]
        self.territory_region = {
            t: regions[i % len(regions)] for i, t in enumerate(codes["territory"])
        }
        self.seller_skill = {s: rng.gauss(0, 0.6) for s in codes["seller_id"]}
        self.source_effect = {s: rng.gauss(0, 0.5) for s in codes["lead_source"]}
        self.type_effect = {t: rng.gauss(0, 0.3) for t in codes["opportunity_type"]}
        self.region_effect = {r: rng.gauss(0, 0.25) for r in regions}
        self.fit = {
            (bu, ind): 0.9 if rng.random() < 0.3 else -0.3
            for bu in codes["business_unit"]
            for ind in codes["industry"]
        }
        self.clients = [f"CL-{i:05d}" for i in range(n_clients)]
        self.client_loyalty = {c: rng.gauss(0, 0.35) for c in self.clients}
        self.client_industry = {c: rng.choice(codes["industry"]) for c in self.clients}

    def draw(self, rng: random.Random, created: datetime) -> tuple[dict[str, Any], float, int]:
        """An opportunity's fields (at stage S1), its win probability and its planned cycle."""
        client = rng.choice(self.clients)
        business_unit = rng.choice(self.codes["business_unit"])
        territory = rng.choice(self.codes["territory"])
        acv = round(math.exp(rng.gauss(10.5, 1.2)), 2)
        years = rng.choice((1, 1, 1, 2, 3, 5))
        margin = round(rng.uniform(0.05, 0.30), 2)
        fields: dict[str, Any] = {
            "client_code": client,
            "business_unit": business_unit,
            "opportunity_type": rng.choice(self.codes["opportunity_type"]),
            "acv": acv,
            "tcv": round(acv * years, 2),
            "margin": margin,
            "region": self.territory_region[territory],
            "territory": territory,
            "industry": self.client_industry[client],
            "lead_source": rng.choice(self.codes["lead_source"]),
            "seller_id": rng.choice(self.codes["seller_id"]),
        }
        logit = (
            -0.2
            + self.seller_skill[fields["seller_id"]]
            + self.client_loyalty[client]
            + self.source_effect[fields["lead_source"]]
            + self.type_effect[fields["opportunity_type"]]
            + self.region_effect[fields["region"]]
            + self.fit[(business_unit, fields["industry"])]
            - (0.9 if acv > 250_000 else 0.0)  # a threshold: big deals are harder
            - 4.0 * (margin - 0.17)  # asking more margin loses deals
            + (0.5 if years >= 3 and self.seller_skill[fields["seller_id"]] > 0 else 0.0)
        )
        cycle = int(20 + 25 * math.log10(max(acv, 10)) * rng.uniform(0.5, 1.5))
        fields["expected_close_date"] = (created + timedelta(days=cycle)).date()
        fields["notes"] = ""
        return fields, 1 / (1 + math.exp(-logit)), cycle


def _history(
    fields: dict[str, Any], seq: int, created: datetime, won: bool, cycle: int,
    rng: random.Random, now: datetime,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """The stored document and every event of one opportunity's life until ``now``."""
    NewOpportunity.model_validate({**fields, "stage": "S1"})  # the capture schema, strictly
    doc = opportunities.new_document({**fields, "stage": "S1"}, seq, created)
    events = [opportunities.event_of(doc)]
    last_stage = 6 if won else rng.randint(1, 6)
    step = timedelta(days=cycle * rng.uniform(0.8, 1.3) / (last_stage + 1))
    at = created
    for stage in range(2, last_stage + 1):
        at += step
        if at > now:
            return doc, events
        doc = opportunities.next_version(doc, {"stage": f"S{stage}"}, "stage_changed", at)
        events.append(opportunities.event_of(doc))
    at += step
    if at > now:
        return doc, events
    at = opportunities.to_millis(at)
    closing: dict[str, Any] = {"stage": "Won" if won else "Lost", "closed_at": at}
    if not won:
        closing["lost_reason"] = rng.choice(LOST_REASONS)
    doc = opportunities.next_version(doc, closing, "closed", at)
    events.append(opportunities.event_of(doc))
    return doc, events


def seed(
    n: int,
    seed_value: int = 0,
    *,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> SeedSummary:
    """Generate and store ``n`` opportunities (deterministic for a ``seed_value``)."""
    rng = random.Random(seed_value)
    now = now or opportunities.now_utc()
    company = Company(rng, n_clients=max(20, n // 40))
    cols = opportunities.collections()
    summary = SeedSummary()
    first = opportunities.reserve_ids(cols, n)
    start = now - timedelta(days=365 * YEARS_OF_HISTORY)
    for offset in range(0, n, BATCH_SIZE):
        docs, events, truth = [], [], []
        for seq in range(first + offset, first + min(n, offset + BATCH_SIZE)):
            created = start + timedelta(seconds=rng.uniform(0, (now - start).total_seconds()))
            created = opportunities.to_millis(created)
            fields, p_win, cycle = company.draw(rng, created)
            won = rng.random() < p_win
            doc, history = _history(fields, seq, created, won, cycle, rng, now)
            # written now, whatever the dates it tells: the ETL follows the time of writing
            doc["updated_at"] = now
            events += [{**event, "recorded_at": now} for event in history]
            docs.append(doc)
            truth.append({"_id": doc["_id"], "p_win": p_win})
            summary.won += doc["stage"] == "Won"
            summary.lost += doc["stage"] == "Lost"
        opportunities.insert_many(cols, docs, events)
        cols.db.ground_truth.insert_many(truth, ordered=False)
        summary.created += len(docs)
        if progress is not None:
            progress(len(docs))
    summary.open = summary.created - summary.won - summary.lost
    return summary


def seed_demo_if_empty(n: int) -> SeedSummary | None:
    """The demo history of ``make run``: ``n`` opportunities, only into an empty database."""
    cols = opportunities.collections()
    if n <= 0 or cols.opportunities.estimated_document_count() > 0:
        return None
    return seed(n)
