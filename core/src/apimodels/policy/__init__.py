"""Safety policy: the Terms' prohibited uses, enforced before dispatch.

    user_texts(request)       every piece of user text in a request (or any JSON input)
    check_policy(...)         judge one call: its route and its user text (Policy.judge)
    Policy.judge(...)         ask every enabled policy; any deny -> 403, audited
    Policy.record_refusal()   audit an upstream's own safety refusal
    build_policy(...)         the chain, from registry.toml's [policies] (startup)

Policy plugins implement ``register_policies`` and ``check_request`` (see docs/plugins.md);
the core's own ``rules`` policy lives in ``rules``/``ruleset``.
"""

from .chain import Policy, build_policy, check_policy, registered_policies
from .spec import CATEGORIES, UPSTREAM_REFUSAL, PolicyCheck, PolicySpec
from .texts import user_texts

__all__ = [
    "CATEGORIES",
    "UPSTREAM_REFUSAL",
    "Policy",
    "PolicyCheck",
    "PolicySpec",
    "build_policy",
    "check_policy",
    "registered_policies",
    "user_texts",
]
