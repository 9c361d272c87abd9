"""The Anthropic plugin against the core's conformance kit."""

from __future__ import annotations

from pathlib import Path

from apimodels.testing.kit import ProviderConformance


class TestConformance(ProviderConformance):
    provider = "anthropic"
    registry = Path(__file__).parents[3] / "registry.toml"
    # An error event after the stream began, as Anthropic sends one (its overloaded_error).
    failing_stream = (
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        b'"role":"assistant","model":"m","content":[],"stop_reason":null,'
        b'"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
        b"event: content_block_start\n"
        b'data: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded {key}"}}\n\n'
    )
