"""The web console, served by the HTTP listener at ``/``: every queue live, a look inside, and actions.

`web` answers the console's requests (its page, assets and JSON API);
`sampler` keeps the samples of the last hour, once for every viewer;
`sessions` the token login, the session cookie and the guards against
cross-site requests; `actions` what the buttons do, through the native
protocol's admission checks and broker calls. The page itself is three files
in ``static/`` (HTML, CSS, JavaScript; no build step, no library).
"""

from __future__ import annotations

from .actions import Actions
from .sampler import BYTES_PER_QUEUE, MAX_SAMPLED_QUEUES, Sampler
from .sessions import Sessions
from .web import Console

__all__ = ["Actions", "BYTES_PER_QUEUE", "Console", "MAX_SAMPLED_QUEUES", "Sampler", "Sessions"]
