"""The Batch API's jobs, OpenAI-compatible: ``POST /v1/batches``, ``GET /v1/batches/{id}``,
``GET /v1/batches`` (``limit``, ``after``) and ``POST /v1/batches/{id}/cancel``.

Creating a batch checks every line of its input file before anything is queued: the line's
shape (:mod:`cascade.ledger.batch_lines`), its request (as the chat route parses one), its model
and whether the caller's key may use it. A file with any bad line is refused with 400 naming the
lines, so nothing of it runs; a good one is queued at once (``in_progress``) for the runners
(:mod:`cascade.server.batch_runner`). ``completion_window`` is ``24h`` as at OpenAI, or any
whole number of hours from 1 to 168: the deadline after which what has not run expires.
Keys with a budget or a rate limit may not create batches yet: the runner does not charge them.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cascade.core.request import parse_chat_request, parse_json_object
from cascade.errors import InvalidRequestError
from cascade.ledger.batch_lines import BATCH_ENDPOINT, BatchLine, LineError, parse_lines, summarize
from cascade.ledger.batches import BatchInfo
from cascade.server.auth import Caller
from cascade.server.batch_files import BatchCaller, batch_caller, no_file, refusal
from cascade.server.openai_format import BadRequestError, ClientGoneError, read_body, require_json
from cascade.server.proxy import Proxy

MAX_REQUESTS = 50_000
"""The most requests one batch may hold (OpenAI's limit)."""
MAX_WINDOW_HOURS = 168
_WINDOW = re.compile(r"([1-9][0-9]{0,2})h")


async def create(request: Request) -> Response:
    """Queue a batch of the caller's uploaded file."""
    try:
        who = batch_caller(request)
        _refuse_limited_keys(who.caller)
        require_json(request.headers.get("content-type"))
        raw = await read_body(request.receive, request.headers.get("content-length"), 64 * 1024)
        body = parse_json_object(raw)
        file_id = _text(body, "input_file_id")
        if body.get("endpoint") != BATCH_ENDPOINT:
            raise BadRequestError(
                400,
                f"endpoint: this proxy batches {BATCH_ENDPOINT} only "
                f"(got {str(body.get('endpoint'))[:100]!r})",
                param="endpoint",
            )
        window_text, window = _window(body.get("completion_window"))
        metadata = _metadata(body.get("metadata"))
        info = await who.store.file(file_id, who.owner)
        if info is None:
            raise no_file(file_id, "input_file_id")
        if info.purpose != "batch":
            raise BadRequestError(
                400,
                f"input_file_id: {file_id!r} is a batch's result, not an input file",
                param="input_file_id",
            )
        content = await who.store.content(file_id, who.owner)
        lines = _checked_lines(content or b"", request.state.proxy, who.caller)
        batch = await who.store.create_batch(
            lines,
            input_file_id=file_id,
            endpoint=BATCH_ENDPOINT,
            completion_window=window_text,
            window=window,
            metadata=metadata,
            tenant=who.caller.tenant,
            key_id=who.caller.key_id,
            only_tiers=who.caller.tiers,
        )
    except BadRequestError as exc:
        return refusal(exc)
    except InvalidRequestError as exc:
        return refusal(BadRequestError(400, str(exc), param=exc.param))
    except ClientGoneError:
        return Response(status_code=400)
    return JSONResponse(batch_object(batch))


def _refuse_limited_keys(caller: Caller) -> None:
    if caller.budget is not None or caller.rpm is not None or caller.tpm is not None:
        raise BadRequestError(
            403,
            "this key has a budget or a rate limit, which batch requests do not honour yet; "
            "use a key without them for batches",
            code="batches_not_allowed",
        )


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not (isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()):
        raise BadRequestError(400, f"{name}: a file id is required", param=name)
    return value


def _window(value: object) -> tuple[str, timedelta]:
    found = _WINDOW.fullmatch(value) if isinstance(value, str) else None
    if found is None or not 1 <= int(found.group(1)) <= MAX_WINDOW_HOURS:
        raise BadRequestError(
            400,
            f"completion_window: '24h' (or whole hours from 1h to {MAX_WINDOW_HOURS}h); "
            f"got {str(value)[:50]!r}",
            param="completion_window",
        )
    return found.group(0), timedelta(hours=int(found.group(1)))


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    valid = (
        isinstance(value, dict)
        and len(value) <= 16
        and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in value.items()
        )
    )
    if not valid:
        raise BadRequestError(
            400,
            "metadata: at most 16 string keys (up to 64 characters) with string values "
            "(up to 512 characters)",
            param="metadata",
        )
    assert isinstance(value, dict)
    return value


def _checked_lines(content: bytes, proxy: Proxy, caller: Caller) -> list[BatchLine]:
    """Every line of the input file, each a request this caller may send; else 400 naming the
    bad lines."""
    lines, errors = parse_lines(content)
    for line in lines:
        if (problem := _line_problem(line, proxy, caller)) is not None:
            errors.append(problem)
    if len(lines) > MAX_REQUESTS:
        errors.append(
            LineError(
                0,
                "too_many_requests",
                f"the file holds {len(lines)} requests; the limit is {MAX_REQUESTS}",
            )
        )
    if errors:
        errors.sort(key=lambda error: error.line)
        raise BadRequestError(
            400,
            f"input_file_id: the file was refused: {summarize(errors)}",
            param="input_file_id",
            code="invalid_batch_input",
        )
    return lines


def _line_problem(line: BatchLine, proxy: Proxy, caller: Caller) -> LineError | None:
    """What stops one line's request from running (None: nothing)."""
    try:
        chat = parse_chat_request(orjson.dumps(line.body))
        router, tier = proxy.resolve(chat.model)
        caller.permit(router.policy.name, tier, chat.model if tier is not None else None)
    except InvalidRequestError as exc:
        return LineError(line.line, "invalid_body", f"line {line.line}: {exc}", "body")
    except BadRequestError as exc:
        return LineError(
            line.line, exc.code or "invalid_body", f"line {line.line}: {exc.message}", "body.model"
        )
    return None


async def retrieve(request: Request) -> Response:
    """A batch of the caller's, with its request counts."""
    batch_id: str = request.path_params["batch_id"]
    try:
        who = batch_caller(request)
        batch = await who.store.batch(batch_id, who.owner)
        if batch is None:
            raise _no_batch(batch_id)
    except BadRequestError as exc:
        return refusal(exc)
    return JSONResponse(batch_object(batch))


async def cancel(request: Request) -> Response:
    """Cancel a batch: nothing more of it starts; what runs finishes, then it is cancelled."""
    batch_id: str = request.path_params["batch_id"]
    try:
        who = batch_caller(request)
        batch = await who.store.cancel(batch_id, who.owner)
        if batch is None:
            raise _no_batch(batch_id)
    except BadRequestError as exc:
        return refusal(exc)
    return JSONResponse(batch_object(batch))


async def listing(request: Request) -> Response:
    """The caller's batches, newest first: ``limit`` (1 to 100, default 20) after ``after``."""
    try:
        who: BatchCaller = batch_caller(request)
        limit_text = request.query_params.get("limit", "20")
        if not (limit_text.isascii() and limit_text.isdigit() and 1 <= int(limit_text) <= 100):
            raise BadRequestError(400, "limit: a whole number from 1 to 100", param="limit")
        after = request.query_params.get("after")
        found = await who.store.batches(who.owner, limit=int(limit_text) + 1, after=after)
    except BadRequestError as exc:
        return refusal(exc)
    shown = found[: int(limit_text)]
    data = [batch_object(batch) for batch in shown]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(found) > len(shown),
        }
    )


def _no_batch(batch_id: str) -> BadRequestError:
    shown = batch_id if len(batch_id) <= 100 else batch_id[:100] + "..."
    return BadRequestError(404, f"no batch {shown!r}", param="batch_id", code="batch_not_found")


def _seconds(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def batch_object(batch: BatchInfo) -> dict[str, Any]:
    """A batch as OpenAI describes one."""
    row = batch.row
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": None,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": _seconds(row.created_at),
        "in_progress_at": _seconds(row.in_progress_at),
        "expires_at": _seconds(row.expires_at),
        "finalizing_at": _seconds(row.finalizing_at),
        "completed_at": _seconds(row.completed_at),
        "failed_at": None,
        "expired_at": _seconds(row.expired_at),
        "cancelling_at": _seconds(row.cancelling_at),
        "cancelled_at": _seconds(row.cancelled_at),
        "request_counts": {
            "total": row.total,
            "completed": batch.completed,
            "failed": batch.failed,
        },
        "metadata": None if row.metadata_json is None else orjson.loads(row.metadata_json),
    }


BATCH_ROUTES = [
    Route("/v1/batches", create, methods=["POST"]),
    Route("/v1/batches", listing, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel, methods=["POST"]),
]
