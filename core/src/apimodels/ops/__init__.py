"""Running the gateway in production: metrics, structured logs, health probes (see
docs/self-hosting.md, "Operations")."""

from __future__ import annotations

from .health import Health
from .logs import LogFormat, log_config
from .metrics import CountedTaskStore, Metrics, RequestObserver, multiprocess_dir

__all__ = [
    "CountedTaskStore",
    "Health",
    "LogFormat",
    "Metrics",
    "RequestObserver",
    "log_config",
    "multiprocess_dir",
]
