"""The unified request bodies, one per endpoint, in OpenAI's shape.

Fields the gateway needs are typed and validated; anything else OpenAI accepts passes through
untouched (``extra="allow"``) so a provider plugin can forward it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The largest output a request may ask for (no model comes near it).
MAX_OUTPUT_TOKENS = 10_000_000


class Modality(StrEnum):
    chat = "chat"
    embedding = "embedding"
    image = "image"
    speech = "speech"
    transcription = "transcription"
    video = "video"


class UnifiedRequest(BaseModel):
    """Base of every request body: ``model`` is the public catalog id.

    Strict types, as the JSON body and /openapi.json say them (``"stream": 0`` is no
    boolean, ``"max_tokens": "5"`` no integer), as OpenAI's API answers them."""

    model_config = ConfigDict(extra="allow", frozen=False, strict=True)

    model: Annotated[str, Field(min_length=1)]

    def passthrough(self) -> dict[str, Any]:
        """The body as sent by the client, minus unset optional fields."""
        return self.model_dump(exclude_none=True)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class ChatRequest(UnifiedRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Bounded so that an estimate always fits the ledger's integers (and any real model).
    max_tokens: Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)] | None = None
    n: Annotated[int, Field(ge=1, le=8)] | None = None

    def text(self) -> str:
        """Every piece of text in the messages, for estimates and policy checks."""
        parts: list[str] = []
        for m in self.messages:
            if isinstance(m.content, str):
                parts.append(m.content)
            elif m.content:
                parts.extend(
                    p["text"]
                    for p in m.content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
        return "\n".join(parts)


class EmbeddingRequest(UnifiedRequest):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None


class ImageRequest(UnifiedRequest):
    prompt: Annotated[str, Field(min_length=1)]
    n: Annotated[int, Field(ge=1, le=10)] = 1
    size: str | None = None
    quality: str | None = None
    response_format: Literal["url", "b64_json"] | None = None


class SpeechRequest(UnifiedRequest):
    input: Annotated[str, Field(min_length=1, max_length=4096)]
    voice: Annotated[str, Field(min_length=1)]
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] | None = None
    #: Style directions (gpt-4o-mini-tts); part of the text a model reads and bills.
    instructions: Annotated[str, Field(max_length=4096)] | None = None
    #: "audio" (the default): the audio's bytes; "sse": speech.audio.delta events, then a
    #: speech.audio.done event with the usage, where the model can stream them.
    stream_format: Literal["audio", "sse"] | None = None


class TranscriptionRequest(UnifiedRequest):
    """A multipart upload: ``file`` holds the audio bytes, the rest are form fields (text,
    so read in lax mode: ``temperature=0.2`` arrives as a string)."""

    model_config = ConfigDict(extra="allow", strict=False)

    file: bytes = Field(repr=False)
    filename: str = "audio"
    file_content_type: str = "application/octet-stream"
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt"] = "json"
    language: str | None = None
    prompt: str | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None


class TaskRequest(UnifiedRequest):
    """A task for a model its upstream runs as jobs: ``input`` follows the model's schema."""

    input: dict[str, Any]


#: The request model and the modality each unified endpoint accepts.
ENDPOINTS: dict[str, tuple[type[UnifiedRequest], Modality]] = {
    "chat/completions": (ChatRequest, Modality.chat),
    "embeddings": (EmbeddingRequest, Modality.embedding),
    "images/generations": (ImageRequest, Modality.image),
    "audio/speech": (SpeechRequest, Modality.speech),
    "audio/transcriptions": (TranscriptionRequest, Modality.transcription),
}
