"""The frontend's OpenAPI document, with the real request schemas.

The routes read and validate their bodies themselves (one strict pydantic pass, errors in the
OpenAI format), so FastAPI cannot see the request models; this module puts their JSON schemas
into ``/openapi.json`` so clients, docs and fuzzers (schemathesis) see what is accepted.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from dynamo.frontend.protocol import ChatCompletionRequest, CompletionRequest

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model``."""
    error = {"$ref": REF.format(model="ErrorResponse")}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(
            model=model.__name__)}}}},
        "responses": {
            "400": _json(error, "Invalid request (the field is named in error.param)"),
            "401": _json(error, "Missing or wrong API key (with --api-key)"),
            "404": _json(error, "Unknown model"),
            "413": _json(error, "Request body over the size limit"),
            "503": _json(error, "No worker can take the request now (see Retry-After)"),
        },
    }


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` include the request and error schemas."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                                 description="OpenAI-compatible API of a Dynamo frontend")
            _, defs = models_json_schema(
                [(ChatCompletionRequest, "validation"), (CompletionRequest, "validation"),
                 (ErrorResponse, "serialization")],
                ref_template=REF,
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
