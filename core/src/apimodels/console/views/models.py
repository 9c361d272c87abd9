"""The public price list (no sign-in): each model's modality, provider, context length
where known and its unit prices, as the catalog states them (the prices that govern)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..app import Console, page


def routes(console: Console) -> list[BaseRoute]:
    rows = [  # the catalog is fixed for the life of the process: built once
        {
            "id": model.id,
            "modality": model.modality.value,
            "provider": model.provider,
            "context_tokens": model.context_tokens,
            "prices": model.pricing.as_dict(),
            "description": model.description,
        }
        for model in sorted(console.catalog.models.values(), key=lambda m: m.id)
        if model.id in console.routes_by_model
    ]

    async def index(request: Request) -> Response:
        return console.render(request, "models.html", models=rows)

    return [Route("/models", page(console, index, signed_in=False), methods=["GET"])]
