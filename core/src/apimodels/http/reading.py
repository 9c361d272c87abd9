"""Reading a client's request: JSON and multipart bodies, and pydantic's validation errors
as OpenAI's (the field in ``param``). Everything wrong with a body is a 400 here, before
anything is judged, held or sent."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from .. import fastjson
from ..errors import InvalidRequest


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(exc: ValidationError) -> InvalidRequest:
    err = exc.errors()[0]
    param = _param(err["loc"])
    if err["type"] == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    return InvalidRequest(
        f"Invalid value for '{param}': {err['msg']}.", param=param, code="invalid_value"
    )


def _not_a_number(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


#: NaN and Infinity are not JSON, and no upstream would receive them as sent. One decoder
#: for every request: ``json.loads(..., parse_constant=...)`` builds a new one per call,
#: half the cost of reading a small body.
_DECODER = json.JSONDecoder(parse_constant=_not_a_number)


async def read_body(request: Request) -> bytes:
    """``request.body()``, as Starlette reads and keeps it, without its async generator: a
    JSON request's body comes in one message, and the generator was most of the cost of
    reading it."""
    if hasattr(request, "_body"):
        return request._body
    if request._stream_consumed:
        raise RuntimeError("Stream consumed")
    chunks: list[bytes] = []
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            request._is_disconnected = True
            raise ClientDisconnect()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
    request._stream_consumed = True
    request._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return request._body


def _standard_read(raw: bytes) -> Any:
    # As json.loads reads bytes: UTF-8 (a BOM skipped), UTF-16 or UTF-32.
    return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


async def read_json(request: Request) -> dict[str, Any]:
    raw = await read_body(request)
    try:
        # orjson where it reads as the standard library; NaN, a BOM... read (or refused) here
        body = fastjson.loads(raw, _standard_read)
    except (ValueError, RecursionError):
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    # Only an escape can smuggle in half a UTF-16 pair (raw bytes must be valid UTF-8), so
    # ordinary bodies skip the walk.
    if (b"\\ud" in raw or b"\\uD" in raw) and _has_lone_surrogate(body):
        raise InvalidRequest(
            "The request body has a string with an unpaired UTF-16 surrogate escape"
            " (\\ud800-\\udfff): it is not Unicode text. Escape characters outside the"
            " Basic Multilingual Plane as a surrogate pair, or send them as UTF-8.",
            code="invalid_json",
        )
    return body


def _has_lone_surrogate(body: Any) -> bool:
    stack = [body]  # not recursive: the body may be nested as deep as the parser allows
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


async def read_multipart(request: Request) -> dict[str, Any]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(
            "This endpoint takes multipart/form-data with a 'file' part.", param="file"
        )
    try:
        form = await request.form(max_files=1, max_fields=64)
    except (MultiPartException, HTTPException) as exc:
        message = getattr(exc, "message", None) or getattr(exc, "detail", "")
        raise InvalidRequest(f"The multipart body could not be read: {message}") from None
    try:
        body: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "file":
                    raise InvalidRequest(f"Unexpected file part {key!r}.", param=key)
                body["file"] = await value.read()
                body["filename"] = value.filename or "audio"
                body["file_content_type"] = value.content_type or "application/octet-stream"
            else:
                body[key] = value
        if "file" not in body:
            raise InvalidRequest(
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        return body
    finally:
        await form.close()
