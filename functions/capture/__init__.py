"""Capture: create, read, list and update opportunities (a new one answered with its
prediction); serve the catalogs."""

import logging

import azure.functions as func

from shared import catalogs, opportunities, predictions
from shared.http import Operation, endpoint, json_response, read_json
from shared.opportunities import (
    NewOpportunity,
    Opportunity,
    OpportunityPage,
    OpportunityPatch,
)
from shared.predictions import CapturedOpportunity

bp = func.Blueprint()
log = logging.getLogger(__name__)

KEY_PARAMETER = "code"


def _opportunity_response(
    opportunity: dict, status: int = 200, **headers: str
) -> func.HttpResponse:
    return json_response(opportunity, status, {"ETag": f'"{opportunity["version"]}"', **headers})


@bp.route(route="opportunities", methods=["POST"])
@endpoint(
    Operation(
        "Record a new opportunity",
        request=NewOpportunity,
        responses={201: CapturedOpportunity, 400: None, 413: None, 415: None, 422: None},
        headers=("Idempotency-Key",),
    )
)
def capture_opportunity(req: func.HttpRequest) -> func.HttpResponse:
    new = opportunities.parse(NewOpportunity, read_json(req))
    result = opportunities.create(new, req.headers.get("idempotency-key"))
    location = f"/api/opportunities/{result.opportunity['opportunity_id']}"
    extra = {"Idempotent-Replayed": "true"} if result.replayed else {}
    captured = {**result.opportunity, "prediction": predictions.for_capture(result.opportunity)}
    return _opportunity_response(captured, 201, Location=location, **extra)


@bp.route(route="opportunities", methods=["GET"])
@endpoint(
    Operation(
        "List opportunities, newest first",
        query=opportunities.ListQuery,
        responses={200: OpportunityPage, 422: None},
    )
)
def list_opportunities(req: func.HttpRequest) -> func.HttpResponse:
    params = {k: v for k, v in req.params.items() if k != KEY_PARAMETER}
    query = opportunities.parse(opportunities.ListQuery, params)
    return json_response(opportunities.list_page(query))


@bp.route(route="opportunities/{id}", methods=["GET"])
@endpoint(Operation("Read one opportunity", responses={200: Opportunity, 404: None}))
def get_opportunity(req: func.HttpRequest) -> func.HttpResponse:
    return _opportunity_response(opportunities.get(req.route_params["id"]))


@bp.route(route="opportunities/{id}", methods=["PATCH"])
@endpoint(
    Operation(
        "Change fields or the stage of an opportunity",
        request=OpportunityPatch,
        responses={200: Opportunity, 404: None, 412: None, 415: None, 422: None},
        headers=("If-Match",),
    )
)
def update_opportunity(req: func.HttpRequest) -> func.HttpResponse:
    patch = opportunities.parse(OpportunityPatch, read_json(req))
    expected = opportunities.parse_if_match(req.headers.get("if-match"))
    return _opportunity_response(opportunities.update(req.route_params["id"], patch, expected))


@bp.route(route="opportunities/{id}", methods=["DELETE"])
@endpoint(
    Operation(
        "Delete an opportunity (soft: reporting keeps it, marked deleted)",
        responses={204: None, 404: None, 412: None},
        headers=("If-Match",),
    )
)
def delete_opportunity(req: func.HttpRequest) -> func.HttpResponse:
    expected = opportunities.parse_if_match(req.headers.get("if-match"))
    opportunities.delete(req.route_params["id"], expected)
    return func.HttpResponse(status_code=204)


@bp.route(route="catalogs", methods=["GET"])
@endpoint(Operation("The allowed codes of each categorical field", responses={200: None}))
def get_catalogs(req: func.HttpRequest) -> func.HttpResponse:
    db = opportunities.collections().db
    return json_response({name: sorted(codes) for name, codes in catalogs.current(db).items()})


@bp.timer_trigger(schedule="%IDEMPOTENCY_PURGE_SCHEDULE%", arg_name="timer", run_on_startup=False)
def purge_idempotency_keys(timer: func.TimerRequest) -> None:
    deleted = opportunities.purge_idempotency_keys()
    log.info("Purged %d expired Idempotency-Key record(s)", deleted)
