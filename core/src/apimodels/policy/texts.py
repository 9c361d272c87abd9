"""Every piece of user text in a request, for the policy plugins.

One walk over the request: chat messages (string content and every text of content
parts, tool results and client-supplied assistant turns included), image and video
prompts, speech input, transcription prompts, embedding inputs, and any free-form
structured input (a task's ``input`` object), however deeply nested. Keys that never hold
prose (ids, enum-like options, URLs of media, uploaded bytes) are skipped, and so are
strings that are data, not words: ``data:`` URIs and strings that are one long run of
base64 or hex characters.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

#: Keys whose values are options or references, never user prose.
SKIPPED_KEYS = frozenset(
    {
        "model",
        "role",
        "type",
        "voice",
        "response_format",
        "encoding_format",
        "size",
        "quality",
        "style",
        "format",
        "output_format",
        "detail",
        "image_url",
        "input_audio",
        "file",
        "file_id",
        "filename",
        "file_content_type",
        "id",
        "tool_call_id",
        "language",
        "aspect_ratio",
        "mime_type",
        "stream_options",
        "user",
    }
)
#: A string of at least 256 base64 or hex characters and nothing else is data, not words.
#: (Only the whole string: a long run in front of prose must not hide the prose.)
_DATA = re.compile(r"[A-Za-z0-9+/=_-]{256,}")


def _is_data(text: str) -> bool:
    return text.startswith("data:") or (len(text) >= 256 and _DATA.fullmatch(text) is not None)


def user_texts(value: Any) -> list[str]:
    """The user texts in ``value``: a unified request, or any JSON-like object.

    Iterative (an explicit stack), so no nesting depth can make it fail. Exact types are
    told apart by ``type`` first: most of a request's values are strings, numbers,
    booleans and None, which went through a chain of failed ``isinstance`` before.
    """
    texts: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is str or isinstance(item, str):
            if item and not _is_data(item):
                texts.append(item)
        elif isinstance(item, dict):
            stack.extend([v for k, v in reversed(item.items()) if k not in SKIPPED_KEYS])
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))
        elif isinstance(item, BaseModel):
            # Declared fields (pydantic keeps them in ``__dict__``, in declaration order;
            # reading ``model_fields`` costs microseconds a request) and the extra ones a
            # client sent (``extra="allow"``).
            extra = item.__pydantic_extra__
            stack.append(item.__dict__ | extra if extra else item.__dict__)
    return texts


#: Values that never hold text (exactly these types: a subclass is looked at as before).
_SCALARS = frozenset({type(None), bool, int, float})
