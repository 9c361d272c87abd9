"""The unified response bodies, in OpenAI's shape: what every provider's output must look
like once normalized. The conformance kit validates plugins' outputs against these."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .schemas import Modality

#: A cost as the API reports it: USD, a JSON number of at most six decimal places (read
#: exactly: pydantic reads a float through its shortest decimal form).
Cost = Annotated[Decimal, Field(ge=0, decimal_places=6)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessageOut(_Open):
    role: Literal["assistant"]
    content: str | None = None


class ChatChoice(_Open):
    index: int
    message: ChatMessageOut
    finish_reason: str | None = None


class ChatUsage(_Open):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    cost: Cost


class ChatCompletion(_Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice] = Field(min_length=1)
    usage: ChatUsage


class Embedding(_Open):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Open):
    prompt_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    cost: Cost


class EmbeddingList(_Open):
    object: Literal["list"]
    data: list[Embedding] = Field(min_length=1)
    model: str
    usage: EmbeddingUsage


class Image(_Open):
    url: str | None = None
    b64_json: str | None = None


class CostOnly(_Open):
    cost: Cost


class ImagesResponse(_Open):
    created: int
    data: list[Image] = Field(min_length=1)
    usage: CostOnly


class Transcription(_Open):
    text: str
    usage: CostOnly


class TaskError(_Open):
    code: str | None
    message: str | None


class TaskFile(_Open):
    url: str
    content_type: str
    bytes: int = Field(ge=0)


class Task(_Open):
    id: str
    object: Literal["task"]
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: str
    started_at: str | None
    completed_at: str | None
    input: dict[str, Any]
    output: list[TaskFile] | str | None
    error: TaskError | None
    cost: Cost | None


#: The JSON body each modality's synchronous endpoint answers (speech answers audio bytes).
RESPONSES: dict[Modality, type[BaseModel]] = {
    Modality.chat: ChatCompletion,
    Modality.embedding: EmbeddingList,
    Modality.image: ImagesResponse,
    Modality.transcription: Transcription,
}
