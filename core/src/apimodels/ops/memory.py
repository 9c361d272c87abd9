"""The garbage collector of a serving process, tuned for a server's heap.

Python's cycle collector runs a young collection every 700 net allocations of container
objects: several per request. With calls in flight, their objects outlive those
collections, are promoted and are traversed again by the older ones; the whole heap,
startup's modules, catalog and pools included, is traversed by every full collection.
A server process settles at startup and then mostly makes short-lived objects, so:

- what startup made is frozen (``gc.freeze``): never traversed again (it stays alive
  anyway: the gateway holds it);
- young collections come every ``YOUNG_THRESHOLD`` allocations instead: a request's
  objects are mostly freed by reference counting before one runs, and the cycles it left
  (exceptions and their tracebacks, closures) are still collected, a little later.

Measured (``bench/ab.py --together``, 30 rounds): 0.92 of the CPU per request with billing
on; no growth of the RSS over 100,000 calls (docs/performance.md).
"""

from __future__ import annotations

import gc

#: Allocations between young collections (Python's default: 700).
YOUNG_THRESHOLD = 50_000
#: Young collections between middle ones, and middle between full ones (default 10, 10).
OLDER_THRESHOLD = 20


def tune_for_serving() -> None:
    """Freeze what startup made and collect young objects less often (once, in each serving
    process, after its startup; never in a process that starts many servers, such as the
    test suite's: frozen objects are never collected)."""
    gc.collect()  # startup's garbage goes now, rather than frozen for good
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
