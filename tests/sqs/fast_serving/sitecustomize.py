"""Loaded at start by the ``dbqueue serve`` processes of the SQS client tests (`sqs_serving` puts this folder on
their PYTHONPATH): the HTTP listener's connections go through the SQS fast path (`SqsConnection`), as they will
once the listener builds them itself, so the Node SDK and Celery run against it."""

from __future__ import annotations

import dbqueue.server.http as _http

if "SqsConnection" not in vars(_http):
    from dbqueue.server.sqs_api import serve_fast_path

    _start = _http.HttpListener.start

    async def _start_fast(self: _http.HttpListener) -> None:
        await _start(self)
        await serve_fast_path(self)

    _http.HttpListener.start = _start_fast  # type: ignore[method-assign]
