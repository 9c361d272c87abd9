"""An instance's ``[providers.NAME.settings]``: the quirks of the server behind it.

Every field has the default that fits a server as close to OpenAI as vLLM, Ollama, Groq,
Together, DeepSeek or OpenRouter; a quirk is set only for the servers that have it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Fields without which a request means nothing: never dropped.
_REQUIRED = frozenset({"model", "messages", "input", "stream"})


class Settings(BaseModel):
    """The quirks of one OpenAI-compatible server.

    :param stream_usage: the server accepts ``stream_options.include_usage`` (then the
        plugin always asks for the final usage chunk, which prices the stream exactly).
        False for servers that refuse the field (Mistral answers 422 "Extra inputs are not
        permitted"): it is never sent, and a stream is charged the usage the server reports
        unasked (Mistral's last chunk carries it), else what was delivered (the estimated
        input and one output token per chunk).
    :param max_tokens_field: the name the server takes for the output limit; the client's
        ``max_tokens`` or ``max_completion_tokens`` is sent under it. ``max_tokens``
        (the default) for Mistral, which refuses ``max_completion_tokens``, and most
        servers; ``max_completion_tokens`` for servers that follow OpenAI's newer name only.
    :param drop_params: top-level request fields the server refuses, removed before
        sending (Groq answers 400 to ``logprobs``, ``logit_bias`` and ``top_logprobs``;
        add ``encoding_format`` for an embeddings server without it: the plugin then
        encodes base64 itself).
    :param extra_body: fields added to every request body, over the client's (OpenRouter's
        ``provider`` routing preferences, vLLM's ``chat_template_kwargs``...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stream_usage: bool = True
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    drop_params: tuple[str, ...] = ()
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @field_validator("drop_params")
    @classmethod
    def _keeps_required_fields(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        kept = sorted(_REQUIRED.intersection(names))
        if kept:
            raise ValueError(f"a request cannot go without {', '.join(kept)}")
        return names


#: The settings of an instance that sets none.
DEFAULT = Settings()
