"""The voices of every provider: ``GET /v1/audio/voices``, and the check of a speech
request's ``voice`` before anything is held or sent.

Gathered once at startup from each provider's ``list_voices`` hook (no upstream call per
request): a request then costs one dict lookup.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidRequest
from ..providers.runtime import Gateway, Route
from ..providers.types import Voice


def voice_object(provider: str, voice: Voice, models: list[str] | None) -> dict[str, Any]:
    """A voice in the unified shape of ``GET /v1/audio/voices``; ``models``: the public ids
    of the served models that take it (None: every speech model of the provider)."""
    out: dict[str, Any] = {
        "id": voice.id,
        "object": "voice",
        "name": voice.name,
        "provider": provider,
    }
    if models is not None:
        out["models"] = models
    if voice.preview_url:
        out["preview_url"] = voice.preview_url
    if voice.labels:
        out["labels"] = dict(voice.labels)
    return out


class Voices:
    """Every provider's voices, indexed by lower-cased id and name. The listing names the
    served models (public ids) a voice is limited to, and leaves out voices that no served
    model takes."""

    def __init__(self, gateway: Gateway) -> None:
        self.index: dict[str, dict[str, Voice]] = {}
        data: list[dict[str, Any]] = []
        for name in sorted(gateway.providers):
            provider = gateway.providers[name]
            voices = provider.hooks.list_voices(upstream=provider.upstream)
            if voices is None:
                continue
            index: dict[str, Voice] = {}
            for voice in voices:
                # ids win over names when a name happens to equal another voice's id
                index.setdefault(voice.name.lower(), voice)
            for voice in voices:
                index[voice.id.lower()] = voice
            self.index[name] = index
            public: dict[str, list[str]] = {}  # upstream id -> public ids of served models
            for model_id, route in sorted(gateway.routes.items()):
                if route.provider is provider:
                    public.setdefault(route.model.upstream, []).append(model_id)
            for voice in voices:
                if not voice.models:
                    data.append(voice_object(name, voice, None))
                elif served := [m for up in voice.models for m in public.get(up, [])]:
                    data.append(voice_object(name, voice, served))
        self.body = json.dumps(
            {"object": "list", "data": data}, separators=(",", ":"), ensure_ascii=False
        ).encode()

    def resolve(self, route: Route, voice: str) -> Voice | None:
        """The voice a speech request names; None when its provider lists no voices.

        Raises ``InvalidRequest`` (400 ``voice_not_found``) for a voice the provider does
        not have, or one its model does not speak with.
        """
        index = self.index.get(route.provider.name)
        if index is None:
            return None
        found = index.get(voice.lower())
        model = route.model
        if found is None:
            raise InvalidRequest(
                f"The voice '{voice}' does not exist for {model.id}. "
                f"GET /v1/audio/voices lists the voices of every provider.",
                code="voice_not_found",
                param="voice",
            )
        if found.models and model.upstream not in found.models:
            raise InvalidRequest(
                f"The voice '{voice}' is not available with {model.id}; "
                f"it works with {', '.join(found.models)}.",
                code="voice_not_found",
                param="voice",
            )
        return found
