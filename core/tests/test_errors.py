"""What an error message may say: anything key-shaped is cut to its prefix, and names that
merely contain a key's prefix are left alone."""

from __future__ import annotations

import pytest

from apimodels.errors import NotFound, redact


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "The model 'sk-am-abcdefgh0123456789abcdefXYZ' does not exist",
            "The model 'sk-am-***' does not exist",
        ),
        ("sk-proj-AbCdEfGhIjKlMnOpQrStUvWx", "sk-***"),
        (
            "ElevenLabs: key sk_0123456789abcdef0123456789abcdef rejected",
            "ElevenLabs: key sk_*** rejected",
        ),
        ("rk_live_0123456789abcdefABCD", "rk_***"),
        ("token r8_AbCdEfGhIjKlMnOpQrStUv", "token r8_***"),
        ("hf_abcdefghijklmnopqrstuv", "hf_***"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_***"),
        # Left alone: voice and model names that only contain a prefix, short ids.
        ("voice_sk_female_01", "voice_sk_female_01"),
        ("sk-SK-LukasNeural", "sk-SK-LukasNeural"),
        ("task_sk-12345", "task_sk-12345"),
        ("risk-assessment-model", "risk-assessment-model"),
    ],
)
def test_key_shaped_text_is_redacted(text: str, said: str) -> None:
    assert redact(text) == said


def test_an_error_body_never_echoes_a_key() -> None:
    key = "sk-am-" + "A" * 48
    body = NotFound(f"No task {key!r}").body()
    assert key[6:] not in body["error"]["message"]
