"""The OpenAI-compatible plugin against the core's conformance kit, on two instances: one
as close to OpenAI as vLLM or Ollama, one with Mistral's and Groq's quirks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from apimodels.testing.kit import ProviderConformance

CATALOG = Path(__file__).with_name("catalog.toml")


class TestConformance(ProviderConformance):
    provider = "local"
    registry = CATALOG
    # OpenRouter's way: HTTP 200, an error object whose code is an HTTP status.
    errors_in_2xx: ClassVar[list[bytes]] = [
        b'{"error": {"code": 429, "message": "Rate limit exceeded for key {key}"}}',
        b'{"error": {"code": 502, "message": "Provider returned error"}}',
    ]
    failing_stream = (
        b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
        b'data: {"error":{"code":503,"message":"upstream of {key} overloaded"}}\n\n'
    )


class TestConformanceOfAStrictServer(ProviderConformance):
    provider = "strict"
    registry = CATALOG
    # Mistral refuses stream_options but reports the usage on a stream's last chunk anyway.
    simulator_knobs: ClassVar[dict[str, Any]] = {"usage_unasked": True}
