"""The Batch API's JSONL, in OpenAI's format: reading an input file's lines, writing result lines.

An input line is ``{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions",
"body": {...}}``; every line is checked before anything is queued, and each problem is reported
with its line number (1-based) the way OpenAI's ``errors.data`` reports them. A result line is
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

BATCH_ENDPOINT = "/v1/chat/completions"
"""The only endpoint a batch may name (the proxy routes chat completions)."""
MAX_CUSTOM_ID_CHARS = 512
MAX_LINE_ERRORS = 20
"""At most this many line errors are listed; the message says how many more there were."""


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One valid input line: its number (1-based), ``custom_id`` and request body."""

    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LineError:
    """What is wrong with one input line (OpenAI's ``BatchError``)."""

    line: int
    code: str
    message: str
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The error as it appears in a batch's ``errors.data``."""
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


def parse_lines(
    content: bytes, *, endpoint: str = BATCH_ENDPOINT
) -> tuple[list[BatchLine], list[LineError]]:
    """Every request of an input file, and every problem found (blank lines are skipped)."""
    found: list[BatchLine] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        item = _parse_line(number, raw, endpoint)
        if isinstance(item, LineError):
            errors.append(item)
        elif item.custom_id in seen:
            errors.append(
                LineError(
                    number,
                    "duplicate_custom_id",
                    f"line {number}: custom_id {item.custom_id!r} is used by an earlier line; "
                    "each line needs its own",
                    "custom_id",
                )
            )
        else:
            seen.add(item.custom_id)
            found.append(item)
    if not found and not errors:
        errors.append(LineError(0, "empty_file", "the input file holds no requests"))
    return found, errors


def _parse_line(number: int, raw: bytes, endpoint: str) -> BatchLine | LineError:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return LineError(number, "invalid_json", f"line {number}: not JSON ({exc})")
    if not isinstance(value, dict):
        return LineError(number, "invalid_request", f"line {number}: a line must be a JSON object")
    custom_id, body = value.get("custom_id"), value.get("body")
    checks = (
        (
            isinstance(custom_id, str) and 0 < len(custom_id) <= MAX_CUSTOM_ID_CHARS,
            "invalid_custom_id",
            "custom_id",
            f"custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters",
        ),
        (
            value.get("method") == "POST",
            "invalid_method",
            "method",
            f"method must be 'POST', got {value.get('method')!r}",
        ),
        (
            value.get("url") == endpoint,
            "invalid_url",
            "url",
            f"url must be the batch's endpoint {endpoint!r}, got {str(value.get('url'))[:100]!r}",
        ),
        (
            isinstance(body, dict),
            "invalid_body",
            "body",
            "body must be a JSON object (the chat completion request)",
        ),
        (
            not (isinstance(body, dict) and body.get("stream")),
            "invalid_body",
            "body.stream",
            "body.stream: a batch request is not streamed; leave stream out",
        ),
    )
    for passed, code, param, message in checks:
        if not passed:
            return LineError(number, code, f"line {number}: {message}", param)
    assert isinstance(custom_id, str)
    assert isinstance(body, dict)
    return BatchLine(number, custom_id, body)


def summarize(errors: list[LineError]) -> str:
    """One message for a refused input file: its first errors, and how many more."""
    shown = "; ".join(error.message for error in errors[:MAX_LINE_ERRORS])
    more = len(errors) - MAX_LINE_ERRORS
    return shown + (f"; and {more} more" if more > 0 else "")


def result_line(
    request_id: str,
    custom_id: str,
    *,
    status_code: int | None,
    body: Any,
    error: dict[str, Any] | None = None,
) -> bytes:
    """One line of a batch's output or error file (``response`` is null without a status)."""
    response = (
        None
        if status_code is None
        else {"status_code": status_code, "request_id": request_id, "body": body}
    )
    return orjson.dumps(
        {"id": request_id, "custom_id": custom_id, "response": response, "error": error}
    )
