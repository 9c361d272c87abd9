"""The errors apimodels answers with, all in OpenAI's error shape.

    APIError                      base: an HTTP status and OpenAI's {"error": {...}} body
    ├── InvalidRequest            400 bad input (names the field in ``param``)
    ├── AuthenticationError       401 missing, unknown, revoked or expired key
    ├── InsufficientCredits       402 balance minus holds is short
    ├── PermissionDenied          403 suspended account or policy refusal
    ├── NotFound                  404 unknown model, task or route
    ├── ModelRetired              410 the model was retired upstream (names its replacement)
    ├── PayloadTooLarge           413 body over the configured size
    ├── RateLimited               429 too many requests (may carry Retry-After)
    ├── ServiceUnavailable        503 provider not configured (missing upstream key)
    │   └── UpstreamOverloaded    503 the provider is overloaded: retry later
    ├── UpstreamError             502 the provider failed or answered nonsense
    └── UpstreamTimeout           504 the provider did not answer in time

Messages are written for the API consumer: never a stack trace, an internal path or an
upstream key; anything key-shaped in a message is redacted when it is answered, and the
core scrubs the provider's own key from every error a plugin's hook returns or raises.

``retriable`` says whether the same request may succeed if tried again later or on
another route (rate limits, overload, an upstream's failure or timeout), as against a
request that will fail wherever it goes (bad input, a refusal). A plugin may set it per
error (``UpstreamError(..., retriable=False)`` for an upstream that will never answer this
request); fallbacks and clients' retries follow it.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

#: Anything shaped like an API key or signing secret (ours ``sk-am-``, OpenAI's ``sk-``,
#: ElevenLabs' and Stripe's ``sk_``, Stripe's restricted ``rk_``, Replicate's ``r8_``,
#: Hugging Face's ``hf_``, webhook secrets ``whsec_``), at least 16 characters after its
#: prefix: a message that quotes what the client sent (an unknown model, task or request id)
#: or an upstream's words never echoes one, and a voice or file name is left alone.
_KEY_SHAPED = re.compile(
    r"(?<![A-Za-z0-9_\-])(amk_|sk-am-|sk-|sk_|rk_|r8_|hf_|whsec_)[A-Za-z0-9_\-+/=.]{16,}"
)


def redact(text: str) -> str:
    """``text`` with every key-shaped run cut to its prefix (``sk-am-***``)."""
    return _KEY_SHAPED.sub(r"\1***", text)


class APIError(Exception):
    """An error answered to the client as ``{"error": {message, type, code, param}}``."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None
    #: May the same request succeed later or elsewhere (see the module's docstring)?
    retriable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        retriable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.headers = headers or {}
        if status is not None:
            self.status = status  # type: ignore[misc]  # honest upstream 4xx mapping
        if retriable is not None:
            self.retriable = retriable  # type: ignore[misc]

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": redact(self.message),
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class InsufficientCredits(APIError):
    status = 402
    type = "insufficient_credits"
    default_code = "insufficient_credits"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelRetired(APIError):
    status = 410
    type = "invalid_request_error"
    default_code = "model_retired"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    retriable = True


class ServiceUnavailable(APIError):
    status = 503
    type = "service_unavailable"
    default_code = "provider_unavailable"
    retriable = True


class UpstreamOverloaded(ServiceUnavailable):
    """The upstream is overloaded (Anthropic's 529, "try again shortly"): retriable,
    with ``Retry-After`` when the upstream gave one."""

    default_code = "upstream_overloaded"


class UpstreamError(APIError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"
    retriable = True


class UpstreamTimeout(APIError):
    status = 504
    type = "upstream_error"
    default_code = "upstream_timeout"
    retriable = True


class ConfigError(Exception):
    """The catalog or the installed plugins do not fit together: startup stops with this."""
