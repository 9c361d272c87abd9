"""The Console's pages, one module per group (as datasette's ``views/``)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from ..app import Console
from . import (
    account,
    admin,
    auth,
    credits,
    dashboard,
    devmail,
    keys,
    language,
    legal,
    models,
    tasks,
    usage,
)


def all_routes(console: Console) -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for module in (
        auth,
        dashboard,
        keys,
        credits,
        usage,
        tasks,
        models,
        account,
        legal,
        language,
        devmail,
        admin,
    ):
        routes += module.routes(console)
    return routes
