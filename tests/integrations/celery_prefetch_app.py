"""The Celery test app (`celery_dbqueue_app`) with a prefetch of 4 a process: what
tests/integrations/test_celery_warm_shutdown.py runs (``python -m celery -A celery_prefetch_app worker``).

A worker of concurrency 1 then holds up to four task messages: one running, the others prefetched, so
a warm shutdown has messages to give back.
"""

from __future__ import annotations

import os

from celery_dbqueue_app import make_app

PREFETCH = 4

app = make_app(os.environ)
app.conf.worker_prefetch_multiplier = PREFETCH
