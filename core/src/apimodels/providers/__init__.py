"""The provider machinery: what passes between the core and a plugin (``types``), catalog
and plugins resolved into routes once at startup (``runtime``), the life of one call
(``dispatch``), the upstream HTTP client (``upstream``), the core's default hooks, and the
simulators' side (``sandbox``, ``media``). The hook specs themselves are the top-level
``apimodels.hookspecs`` (they cover safety policies too); plugins import from ``apimodels``.
"""
