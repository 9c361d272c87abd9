"""The database: the connection and its pragmas (``db``), forward-only migrations
(``migrations``), accounts and hashed API keys (``accounts``). The bottom layer: it imports
nothing else of the core but ``errors``.
"""
