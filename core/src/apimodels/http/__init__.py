"""Everything that speaks HTTP to clients: the Starlette app and its fast lane (``app``),
reading requests (``reading``), the receipts (``/v1/credits``, ``/v1/usage``,
``/v1/generation``), idempotent retries, speech relayed as it arrives, voices, and the
tasks and top-ups routes. Below it: ``providers`` (the life of one call), ``billing``,
``store``, ``tasks``, ``policy``, ``storage`` and ``topups``; nothing below imports from here.
"""
