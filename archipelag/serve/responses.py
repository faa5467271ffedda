"""Responses: the API's envelopes, and the one place errors become HTTP (DESIGN §8)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from archipelag.errors import ArchipelagError, RateLimited

log = logging.getLogger(__name__)


class FastJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), default=str).encode()


def data(value: Any, status_code: int = 200) -> Response:
    return FastJSON({"data": value}, status_code=status_code)


def page(items: Sequence[Any], total: int, limit: int, offset: int) -> Response:
    return FastJSON({"data": list(items), "meta": {"total": total, "limit": limit, "offset": offset}})


def error_body(message: str, code: str, **details: Any) -> dict[str, Any]:
    """``{"error": {message, code, …}}``; a field map (``errors``) is also repeated at the top, where the
    reference network's SDK reads it."""
    body: dict[str, Any] = {"error": {"message": message, "code": code, **details}}
    if "errors" in details:
        body["errors"] = details["errors"]
    return body


def _field_name(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


# What every error answer is (DESIGN §8); OpenAI-style errors add ``type`` and ``param``, a 422 adds ``errors``.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "code"],
        "properties": {"message": {"type": "string"}, "code": {"type": "string"},
                       "errors": {"type": "object", "additionalProperties": {"type": "string"}}},
    }},
}
_ERROR_REF = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema with the errors the handlers below really answer: our envelope in place of FastAPI's
    ``HTTPValidationError`` for 422, any 4xx on every operation, and 503 (no capacity) where a POST asks for
    work. Clients and the API's fuzz test hold responses to this."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path in schema.get("paths", {}).values():
        for method, operation in path.items():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "The request is invalid; `errors` names each field", **_ERROR_REF}
            responses.setdefault("4XX", {"description": "Refused: bad key, scope, credits, missing, limits",
                                         **_ERROR_REF})
            if method == "post":
                responses.setdefault("503", {"description": "No capacity now; retry later", **_ERROR_REF})
    return schema


def install_error_handlers(app: FastAPI) -> None:
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build_schema())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ArchipelagError)
    async def archipelag_error(_: Request, exc: ArchipelagError) -> Response:
        headers = {}
        if "retry_after" in exc.details or isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.details.get("retry_after", 60))
        return FastJSON(jsonable_encoder(error_body(exc.message, exc.code, **exc.details)),
                        status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        errors: dict[str, str] = {}
        for item in exc.errors():
            errors.setdefault(_field_name(item.get("loc", ())), str(item.get("msg", "invalid")))
        names = ", ".join(sorted(errors))
        return FastJSON(error_body(f"the request is invalid: {names}", "validation_error", errors=errors),
                        status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return FastJSON(error_body(str(exc.detail), code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return FastJSON(error_body("internal error; the operator's logs have the details", "internal_error"),
                        status_code=500)
