"""The dbqueue server: `limits` every limit and setting, `session` one connection, `app` the Server and `run`,
`metrics` the Prometheus endpoint, `workers` the ``--workers`` supervisor, `security` tokens and TLS.

The queue logic itself is `dbqueue.core` (no I/O), its durable store `dbqueue.store`. Importing this
package loads `limits` only: `Server`, `run`, `new_event_loop` and `Broker` are imported on first use,
so that the command line can build its options from `Limits` without loading the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .limits import Limits

if TYPE_CHECKING:
    from ..core import Broker
    from .app import Server, new_event_loop, run

__all__ = ["Server", "Limits", "Broker", "run", "new_event_loop"]


def __getattr__(name: str) -> Any:
    # PEP 562: the first `dbqueue.server.Server` imports the server's modules; later ones find it bound.
    source: Any
    if name == "Broker":
        from .. import core as source
    elif name in ("Server", "run", "new_event_loop"):
        from . import app as source
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(source, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
