"""Predict: win probabilities with their factors, the model card, and (admin key) the registry."""

import azure.functions as func

from shared import predictions
from shared.http import Operation, endpoint, json_response, read_json
from shared.model import registry
from shared.opportunities import NewOpportunity, parse
from shared.predictions import PredictBatch, Prediction, PredictionBatch
from shared.settings import get_settings
from shared.stores import postgres

bp = func.Blueprint()


@bp.route(route="opportunities/{id}/prediction", methods=["GET"])
@endpoint(
    Operation(
        "How likely a stored opportunity is to be won, and why",
        responses={200: Prediction, 404: None, 503: None},
    )
)
def predict_opportunity(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(predictions.predict_opportunity(req.route_params["id"]))


@bp.route(route="predict", methods=["POST"])
@endpoint(
    Operation(
        "What-if: predict an opportunity without storing it",
        request=NewOpportunity,
        responses={200: Prediction, 400: None, 413: None, 415: None, 422: None},
    )
)
def predict(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(predictions.predict_new(parse(NewOpportunity, read_json(req))))


@bp.route(route="predict/batch", methods=["POST"])
@endpoint(
    Operation(
        f"Predict up to {predictions.MAX_BATCH} opportunities in one call",
        request=PredictBatch,
        responses={200: PredictionBatch, 400: None, 413: None, 415: None, 422: None},
    )
)
def predict_batch(req: func.HttpRequest) -> func.HttpResponse:
    batch = parse(PredictBatch, read_json(req, get_settings().max_batch_body_bytes))
    return json_response({"predictions": predictions.predict_batch(batch)})


@bp.route(route="model", methods=["GET"])
@endpoint(Operation("The active model's card", responses={200: None, 503: None}))
def get_model(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(predictions.model_card())


@bp.route(route="models", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
@endpoint(Operation("Every model version, newest first (admin key)", responses={200: None}))
def list_models(req: func.HttpRequest) -> func.HttpResponse:
    with postgres.connection() as conn:
        return json_response({"models": registry.cards(conn)})


@bp.route(route="models/{version:int}/activate", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@endpoint(
    Operation("Serve a model version (admin key)", responses={200: None, 404: None, 503: None})
)
def activate_model(req: func.HttpRequest) -> func.HttpResponse:
    version = int(req.route_params["version"])
    registry.activate(version, "activated through the admin API")
    return json_response({"active": version})


@bp.route(route="models/rollback", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
@endpoint(
    Operation(
        "Serve the model that was active before the current one (admin key)",
        responses={200: None, 409: None},
    )
)
def rollback_model(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"active": registry.rollback("rolled back through the admin API")})
