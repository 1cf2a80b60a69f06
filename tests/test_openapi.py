"""GET /api/openapi.json: generated from the registered functions and the pydantic models."""

from __future__ import annotations

import httpx

from shared.http import registered_functions


def test_the_document_covers_every_registered_http_function(host) -> None:
    from function_app import app

    _, base = host
    document = httpx.get(f"{base}/api/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    operations = {
        op["operationId"]: (path, method)
        for path, methods in document["paths"].items()
        for method, op in methods.items()
    }
    http = [f for f in registered_functions(app) if f.get_trigger().type == "httpTrigger"]
    assert set(operations) == {f.get_function_name() for f in http}
    assert operations["update_opportunity"] == ("/api/opportunities/{id}", "patch")

    schemas = document["components"]["schemas"]
    new = schemas["NewOpportunity"]
    assert new["additionalProperties"] is False
    assert {"client_code", "acv", "tcv", "region", "expected_close_date"} <= set(new["required"])
    assert set(new["properties"]["stage"]["enum"]) == {
        "S1",
        "S2",
        "S3",
        "S4",
        "S5",
        "S6",
        "Won",
        "Lost",
    }
    capture = document["paths"]["/api/opportunities"]["post"]
    assert capture["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NewOpportunity"
    }
    assert set(capture["responses"]) >= {"201", "400", "401", "413", "415", "422"}
    assert document["paths"]["/api/health"]["get"]["security"] == []
    for ref in _refs(document):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)
