"""What passes between the core and a policy plugin: the fixed list of categories, the
policy's registration, and the description of a check that needs an upstream call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
from pydantic import BaseModel

from ..providers.types import Verdict

#: The prohibited uses of the Terms: every deny names one of these.
CATEGORIES: dict[str, str] = {
    "infringement": "content that infringes others' rights (piracy, DRM or watermark removal)",
    "illegal": "illegal content or instructions (weapons, drugs, other serious crime)",
    "fraud": "fraudulent content (phishing, scams, stolen payment data, forged documents)",
    "malware": "malicious software (ransomware, keyloggers, stealers, botnets)",
    "child_sexual_content": "sexual content involving minors",
    "non_consensual_deepfake": "sexual or intimate imagery of real people without consent",
    "harassment": "harassment, threats, doxxing",
    "hate": "hate speech against protected groups",
    "safety_circumvention": "attempts to circumvent upstream safety controls (jailbreaks)",
}

#: The category recorded when an upstream's own safety system refused a request; the
#: upstream does not say which of ours it was.
UPSTREAM_REFUSAL = "upstream_refusal"


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy a plugin offers, registered through the ``register_policies`` hook.

    :param name: the policy's name in registry.toml (``[policies.NAME]``).
    :param settings: a pydantic model for ``[policies.NAME.settings]``, validated once at
        startup; the validated object is passed to ``check_request`` as ``settings``.
    :param provider: the provider whose upstream (base URL, key, connection pool) the
        policy calls, if it calls one; it must be enabled in the catalog.
    """

    name: str
    settings: type[BaseModel] | None = None
    provider: str | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    """A verdict that needs an upstream call (for example a moderation endpoint).

    The plugin stays sans-I/O: the core sends ``request`` with the provider's pooled client
    under the policy's ``timeout`` and hands the response (status below 400) to ``read``.
    A failure anywhere (transport, status, ``read`` raising) follows the policy's ``fail``
    setting: ``closed`` refuses the request (503 ``policy_unavailable``), ``open`` lets it
    through.
    """

    request: httpx.Request
    read: Callable[[httpx.Response], Verdict | None]
