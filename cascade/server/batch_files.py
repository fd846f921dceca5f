"""The Batch API's files, OpenAI-compatible: ``POST /v1/files`` (a multipart upload with
``purpose=batch``), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content`` and
``DELETE /v1/files/{id}``.

A key sees only its tenant's files (another tenant's file id is answered like one that does not
exist). Files live in the database, so every replica serves them; uploads over
``max_batch_file_bytes`` are refused with 413 before they are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cascade.ledger.batches import BatchStore, FileInfo
from cascade.ledger.store import ANY_TENANT, Owner
from cascade.server.auth import Caller, KeyCache
from cascade.server.openai_format import BadRequestError, error_response

UPLOAD_OVERHEAD_BYTES = 64 * 1024
"""Room for the multipart framing and the form's other fields beyond the file's own limit."""
MAX_FILENAME_CHARS = 255


@dataclass(frozen=True, slots=True)
class BatchCaller:
    """Who calls the Batch API, whose rows they see, and the store."""

    caller: Caller
    owner: Owner
    store: BatchStore


def batch_caller(request: Request) -> BatchCaller:
    """Authorize a Batch API request exactly as the chat route does (400/401/403 if not)."""
    keys: KeyCache = request.state.keys
    found: list[str | None] = []
    for name in ("authorization", "x-cascade-tenant"):
        values = request.headers.getlist(name)
        if len(values) > 1:
            raise BadRequestError(
                400, f"{name}: sent more than once; send it once", code="duplicate_header"
            )
        found.append(values[0] if values else None)
    caller = keys.authorize(found[0], found[1])
    store: BatchStore | None = request.state.batches
    if store is None:
        raise BadRequestError(
            404,
            "this proxy keeps no database, so it has no Batch API; start it with --database",
            code="batches_unavailable",
        )
    # With virtual keys a caller sees only its tenant's files and batches.
    return BatchCaller(caller, caller.tenant if keys.required else ANY_TENANT, store)


def refusal(exc: BadRequestError) -> Response:
    """A client mistake in OpenAI's error shape."""
    return error_response(exc.status, exc.message, param=exc.param, code=exc.code)


def file_object(info: FileInfo) -> dict[str, Any]:
    """A file as OpenAI describes one."""
    return {
        "id": info.id,
        "object": "file",
        "bytes": info.size,
        "created_at": int(info.created_at.timestamp()),
        "filename": info.filename,
        "purpose": info.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def no_file(file_id: str, param: str = "file_id") -> BadRequestError:
    """404 for a file that does not exist (or is another tenant's)."""
    shown = file_id if len(file_id) <= 100 else file_id[:100] + "..."
    return BadRequestError(404, f"no file {shown!r}", param=param, code="file_not_found")


async def upload(request: Request) -> Response:
    """Store an uploaded JSONL of batch requests (``purpose=batch``)."""
    try:
        who = batch_caller(request)
        limit: int = request.state.proxy.settings.max_batch_file_bytes
        _check_declared_size(request.headers.get("content-length"), limit)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise BadRequestError(
                415, "POST /v1/files takes multipart/form-data with 'file' and 'purpose'"
            )
        async with request.form(max_files=1, max_fields=8) as form:
            purpose = form.get("purpose")
            if purpose != "batch":
                raise BadRequestError(
                    400,
                    f"purpose: this proxy stores files for the Batch API only; send "
                    f"purpose='batch' (got {str(purpose)[:50]!r})",
                    param="purpose",
                )
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise BadRequestError(400, "file: the form holds no file part", param="file")
            content = await upload.read(limit + 1)
            filename = (upload.filename or "upload.jsonl")[:MAX_FILENAME_CHARS]
        if len(content) > limit:
            raise BadRequestError(413, f"file: over the limit of {limit} bytes", param="file")
        info = await who.store.add_file(
            content,
            purpose="batch",
            filename=filename,
            tenant=who.caller.tenant,
            key_id=who.caller.key_id,
        )
    except BadRequestError as exc:
        return refusal(exc)
    return JSONResponse(file_object(info))


def _check_declared_size(declared: str | None, limit: int) -> None:
    if declared is None or not (declared.isascii() and declared.isdigit()):
        raise BadRequestError(411, "POST /v1/files needs a Content-Length header")
    if int(declared) > limit + UPLOAD_OVERHEAD_BYTES:
        raise BadRequestError(
            413, f"the upload is {declared} bytes; the limit is {limit} bytes a file", param="file"
        )


async def retrieve(request: Request) -> Response:
    """A file's description."""
    file_id: str = request.path_params["file_id"]
    try:
        who = batch_caller(request)
        info = await who.store.file(file_id, who.owner)
        if info is None:
            raise no_file(file_id)
    except BadRequestError as exc:
        return refusal(exc)
    return JSONResponse(file_object(info))


async def content(request: Request) -> Response:
    """A file's bytes (an input file, or a batch's output or errors as JSONL)."""
    file_id: str = request.path_params["file_id"]
    try:
        who = batch_caller(request)
        found = await who.store.content(file_id, who.owner)
        if found is None:
            raise no_file(file_id)
    except BadRequestError as exc:
        return refusal(exc)
    return Response(found, media_type="application/octet-stream")


async def remove(request: Request) -> Response:
    """Delete a file (a batch that read it keeps its requests)."""
    file_id: str = request.path_params["file_id"]
    try:
        who = batch_caller(request)
        if not await who.store.delete_file(file_id, who.owner):
            raise no_file(file_id)
    except BadRequestError as exc:
        return refusal(exc)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


FILE_ROUTES = [
    Route("/v1/files", upload, methods=["POST"]),
    Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
    Route("/v1/files/{file_id}", remove, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", content, methods=["GET"]),
]
