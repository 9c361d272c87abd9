"""The Privacy Policy page, filled in with the figures a deployment runs with.

The template (``templates/privacy_policy.md``, ``$name`` placeholders) is the text the
Console will render; ``render_privacy_policy`` fills it from the catalog and the providers'
own declarations (``ProviderSpec.data_sent``), so the page cannot drift from the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from string import Template

from ..catalog import Catalog


def _days(days: int) -> str:
    years, rest = divmod(days, 365)
    if years and rest <= years // 4 + 1:  # leap days: 3653 days are 10 years
        return f"{years} year{'s' if years > 1 else ''}"
    return f"{days} days" if days != 1 else "1 day"


def _seconds(seconds: int) -> str:
    return f"{seconds // 3600} hours" if seconds % 3600 == 0 else f"{seconds} seconds"


def render_privacy_policy(
    catalog: Catalog, providers: Mapping[str, str], *, operator: str, contact: str
) -> str:
    """The policy as Markdown; ``providers`` maps each enabled provider to what it receives."""
    template = (resources.files("apimodels") / "templates" / "privacy_policy.md").read_text()
    retention = catalog.storage.retention_days
    privacy = catalog.privacy
    full = (
        " We also keep the full text of refused requests for the same time."
        if catalog.safety.store_full_content
        else ""
    )
    lines = [
        f"- **{name}**: {what or 'what the request contains'}"
        for name, what in sorted(providers.items())
    ]
    return Template(template).substitute(
        operator=operator,
        contact=contact,
        retention_rule=(
            f"for {_days(retention)} after the task ended, whichever comes first"
            if retention
            else "close your account"
        ),
        billing_retention=_days(privacy.billing_retention_days),
        audit_retention=_days(privacy.audit_excerpt_days),
        close_grace=_days(privacy.close_grace_days),
        url_ttl=_seconds(catalog.storage.url_ttl_seconds),
        full_content=full,
        providers="\n".join(lines) or "- no provider is enabled",
    )
