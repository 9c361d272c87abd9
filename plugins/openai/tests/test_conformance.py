"""The OpenAI plugin against the core's conformance kit."""

from __future__ import annotations

from pathlib import Path

from apimodels.testing.kit import ProviderConformance


class TestConformance(ProviderConformance):
    provider = "openai"
    registry = Path(__file__).parents[3] / "registry.toml"
    # What OpenAI sends when a stream fails after it started.
    failing_stream = (
        b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
        b'data: {"error":{"message":"The server had an error (key {key})","type":"server_error"}}\n\n'
    )
