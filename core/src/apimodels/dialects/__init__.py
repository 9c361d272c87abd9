"""Front-end dialects: other API shapes of the one unified chat request.

The gateway's chat pipeline (authentication, routing, policy, the hold, dispatch, billing)
runs on a :class:`~apimodels.schemas.ChatRequest` and yields a Chat Completions body (with
``usage.cost``) or a stream of Chat Completions chunks. A dialect is the documented mapping
between that and another API's shape (docs/api.md):

- :meth:`Dialect.read` parses a request body in the dialect's shape into an
  :class:`Exchange`, which holds the unified request it reads as;
- :meth:`Exchange.answer` writes the Chat Completions answer back in the dialect's shape;
- :meth:`Exchange.stream` is a :class:`DialectStream`: the relay feeds it Chat Completions
  chunks, it writes the dialect's own stream events;
- :meth:`Dialect.error_body` is an error in the dialect's own error shape.

No I/O here beyond what a dialect's store does: the HTTP glue is in ``apimodels.http``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..billing.money import usd_number
from ..billing.usage import Usage
from ..errors import APIError, InvalidRequest
from ..providers.dispatch import ClientStream
from ..schemas import ChatRequest

__all__ = ["Dialect", "DialectStream", "Exchange", "named_event", "read_model"]

M = TypeVar("M", bound=BaseModel)


class DialectStream(ClientStream):
    """A stream written in a dialect's events. The pipeline tells it what the stream was
    charged (:meth:`charged`) before its last event is written, so that event can carry
    the usage and the cost whether the upstream reported them or the gateway estimated them."""

    usage: Usage | None = None
    cost_micros: int | None = None

    def charged(self, usage: Usage, cost_micros: int) -> None:
        self.usage, self.cost_micros = usage, cost_micros

    def charged_usage(self, reported: dict[str, Any] | None) -> dict[str, Any] | None:
        """The usage charged, as a Chat Completions usage with ``cost``: the upstream's
        last chunk's (it has the details) with the cost charged, or the gateway's estimate
        of what it delivered when the upstream reported none."""
        if self.usage is None or self.cost_micros is None:
            return reported
        cost = usd_number(self.cost_micros)
        if reported is not None:
            return {**reported, "cost": cost}
        return {
            "prompt_tokens": self.usage.input_tokens,
            "completion_tokens": self.usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.usage.cached_input_tokens},
            "cost": cost,
        }


class Exchange(ABC):
    """One request in a dialect: the unified chat request it reads as, and how its answer
    and its stream are written back in the dialect's shape."""

    chat: ChatRequest

    @abstractmethod
    def answer(self, completion: dict[str, Any]) -> dict[str, Any]:
        """The dialect's answer for a Chat Completions body (``usage.cost`` set)."""

    @abstractmethod
    def stream(self) -> DialectStream:
        """A fresh writer of this request's stream events."""


class Dialect(ABC):
    """One API shape served over the chat pipeline."""

    @abstractmethod
    def read(self, body: dict[str, Any], account_id: str) -> Exchange:
        """Parse a request body (raises :class:`~apimodels.errors.InvalidRequest`)."""

    def credentials(self, headers: Any) -> str | None:
        """The ``Authorization`` value to authenticate with (OpenAI's bearer key)."""
        return headers.get("authorization")

    def error_body(self, exc: APIError, request_id: str) -> dict[str, Any]:
        """An error in the dialect's shape (OpenAI's, unless the dialect has its own)."""
        return exc.body()


def read_model(model: type[M], body: dict[str, Any], api: str) -> M:
    """``body`` validated as ``model``, a validation failure as a 400 naming the field; a
    field the model does not take is named as unsupported (not silently dropped)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ""
        for part in err["loc"]:
            param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
        if err["type"] == "extra_forbidden":
            raise InvalidRequest(
                f"'{param}' is not supported by this gateway's {api} (see docs/api.md).",
                param=param,
                code="unsupported_parameter",
            ) from None
        if err["type"] == "missing":
            raise InvalidRequest(
                f"Missing required parameter: '{param}'.",
                param=param,
                code="missing_required_parameter",
            ) from None
        raise InvalidRequest(
            f"Invalid value for '{param}': {err['msg']}.", param=param, code="invalid_value"
        ) from None


def named_event(name: str, payload: bytes) -> bytes:
    """A server-sent event with its name (both the Responses and the Messages API name
    their events)."""
    return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"
