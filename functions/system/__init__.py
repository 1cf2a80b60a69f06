"""System: health of the dependencies and the OpenAPI document."""

import azure.functions as func

from shared import health, openapi
from shared.http import Operation, endpoint, json_response

bp = func.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(
    Operation(
        "Reachability and latency of MongoDB, PostgreSQL and Redis",
        responses={200: None, 503: None},
    )
)
def get_health(req: func.HttpRequest) -> func.HttpResponse:
    result = health.report()
    return json_response(result, 200 if result["status"] == "up" else 503)


@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Operation("This API's OpenAPI 3.1 document", responses={200: None}))
def get_openapi(req: func.HttpRequest) -> func.HttpResponse:
    from function_app import app  # the document describes the app these functions are part of

    return json_response(openapi.document(app))
