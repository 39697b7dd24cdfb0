"""A stand-in for an asyncio transport, for tests that drive a server `Session` with no socket."""

from __future__ import annotations

from typing import Any


class FakeTransport:
    """Just enough of an asyncio transport for a `Session`: collects what it writes, notes a close."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4242) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
