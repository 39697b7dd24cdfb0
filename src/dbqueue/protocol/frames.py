"""Framing: the fixed header, the opcodes, and the receive buffer.

Theory of operation
-------------------
Every frame, in both directions, is a 12-byte header and a body::

    magic u8 (0xDB) | opcode u8 | flags u16 | request_id u32 | body_length u32 | body

all big-endian. The header alone tells where the frame ends, so the receiver
checks the announced length against its limit *before* buffering any of the
body: a peer that announces 4 GiB is refused at the header.

`FrameReader.feed` takes whatever bytes arrived and returns every complete
frame in them as ``(opcode, flags, request_id, body)`` tuples, in one tight
loop: the server handles a whole received buffer of pipelined requests at once
and answers them with one write. A frame that breaks the framing (bad magic,
oversized length) stops the reader for good: `feed` returns the frames before
it and `FrameReader.failure` says what went wrong, so the caller can answer
what it has, report the failure and close.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, NamedTuple

from ..errors import ErrorCode

__all__ = [
    "MAGIC",
    "HEADER",
    "HEADER_SIZE",
    "HEADER_RAW_ID",
    "LENGTH_FIELD",
    "LENGTH_OFFSET",
    "PROTOCOL_VERSION",
    "OLDEST_PROTOCOL_VERSION",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_QUEUE_NAME",
    "BODY_OVERHEAD",
    "MAX_MESSAGE_SIZE_LIMIT",
    "MEMBER_SHIFT",
    "MAX_MEMBERS",
    "NEVER_MS",
    "Op",
    "Flag",
    "Frame",
    "FrameFailure",
    "FrameReader",
]

MAGIC = 0xDB
HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size  # 12
LENGTH_OFFSET = HEADER_SIZE - 4  # where a header holds body_length (a u32, last)
LENGTH_FIELD = slice(LENGTH_OFFSET, HEADER_SIZE)
LENGTH_INDEX = 4  # body_length's place in a header unpacked by HEADER
# The same header with the request id as its 4 wire bytes: what bulk codecs cut and copy into replies.
HEADER_RAW_ID = struct.Struct(">BBH4sI")
# Version 2: a confirm, touch or release settles only a message in flight with the connection that
# sends it (in version 1, any connection's). Version 3: a visibility timeout of 0 means the queue's
# default (in version 2, never; `NEVER_MS` says never now), CREATE_QUEUE carries that default, and
# PEEK, MOVE, DEAD_LETTER and dead letters' origins are new. A Hello below OLDEST_PROTOCOL_VERSION
# is refused, so that a client written for an old rule learns at once that it does not hold here.
PROTOCOL_VERSION = 3
OLDEST_PROTOCOL_VERSION = 3
# A visibility timeout field (READ, READ_BATCH, TOUCH, CREATE_QUEUE) holding this never times out.
NEVER_MS = 0xFFFFFFFF
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
MAX_QUEUE_NAME = 255
# Room in a body for everything but the payload: a length-prefixed queue name
# plus 16 bytes of fixed fields (a Message response uses 12 of them).
BODY_OVERHEAD = 1 + MAX_QUEUE_NAME + 16
# The largest message size a server may be configured with: HelloOk carries it as a u32.
MAX_MESSAGE_SIZE_LIMIT = 0xFFFFFFFF - BODY_OVERHEAD
# A message id's top byte is the index of the group member that handed it out: clients route
# a confirm by it, and each member numbers its messages from ``index << MEMBER_SHIFT``.
MEMBER_SHIFT = 56
MAX_MEMBERS = 1 << (64 - MEMBER_SHIFT)


class Op(enum.IntEnum):
    """Opcodes. Requests are below 0x80, responses at or above it.

    Gaps are deliberate: each block leaves room for the operations planned
    next (authentication).
    """

    # requests: session and queue management
    HELLO = 0x01
    CREATE_QUEUE = 0x02
    DELETE_QUEUE = 0x03
    PURGE = 0x04
    STATS = 0x05
    LIST_QUEUES = 0x06
    MEMBERS = 0x07
    # requests: messages
    ENQUEUE = 0x10
    READ = 0x11
    CONFIRM = 0x12
    ENQUEUE_BATCH = 0x13
    READ_BATCH = 0x14
    CONFIRM_BATCH = 0x15
    TOUCH = 0x16
    RELEASE = 0x17
    ENQUEUE_DELAYED = 0x18
    CANCEL = 0x19
    PEEK = 0x1A
    MOVE = 0x1B
    DEAD_LETTER = 0x1C
    # responses
    HELLO_OK = 0x81
    QUEUE_CREATED = 0x82
    QUEUE_DELETED = 0x83
    PURGED = 0x84
    STATS_REPLY = 0x85
    MEMBERS_REPLY = 0x87
    OBJECT_QUEUED = 0x90
    MESSAGE = 0x91
    CONFIRMED = 0x92
    REQUEUED = 0x93
    FULL = 0x94
    EMPTY = 0x95
    OBJECTS_QUEUED = 0x96
    MESSAGES = 0x97
    CONFIRM_RESULTS = 0x98
    TOUCHED = 0x99
    RELEASED = 0x9A
    CANCELLED = 0x9B
    PEEKED = 0x9C
    MOVED = 0x9D
    DEAD_LETTERED = 0x9E
    ERROR = 0xFF


class Flag(enum.IntFlag):
    """Header flags. Requests carry none (a request with flags is refused); a MESSAGE or MESSAGES
    reply carries ORIGIN when its body holds the origin of a dead letter (see `layouts`), so that
    the common reply, with no origin, keeps its layout and its cost."""

    ORIGIN = 0x0001


# (opcode, flags, request_id, body): a plain tuple, built once per frame on the hot path.
Frame = tuple[int, int, int, bytes]


class FrameFailure(NamedTuple):
    """Why a reader stopped: the framing is lost and the connection must close."""

    request_id: int  # of the offending frame when its header was readable, else 0
    code: int  # an `ErrorCode`
    message: str


class FrameReader:
    """Cuts a byte stream into frames; holds at most one partial frame (and, when a feed stops at
    ``turn`` frames, the whole frames after them: ``more`` is then True, and ``feed(b"")`` goes on).

    ``max_body`` bounds the body length a header may announce.
    """

    __slots__ = ("max_body", "failure", "buffered", "turn", "more", "_chunks", "_needed")

    def __init__(self, max_body: int, turn: int = 1 << 62) -> None:
        self.max_body = max_body
        self.turn = turn  # frames one feed cuts at most (`RequestReader` heeds it)
        self.more = False  # the last feed stopped at `turn` frames, with whole frames left
        self.failure: FrameFailure | None = None
        self._chunks: list[bytes] = []
        self.buffered = 0  # bytes held of a frame not yet complete (a plain field: read per received buffer)
        self._needed = HEADER_SIZE  # bytes needed before parsing is worth trying

    def feed(self, data: bytes) -> list[Any]:
        """Add received bytes; return every frame now complete, in order."""
        if self.failure is not None:
            return []
        if self._chunks:
            # Join only once enough has arrived: a large frame received in
            # many small reads costs one copy, not one per read.
            self._chunks.append(data)
            self.buffered += len(data)
            if self.buffered < self._needed:
                return []
            data = b"".join(self._chunks)
            self._chunks.clear()
        items, pos, self._needed = self._scan(data)
        end = len(data)
        if pos < end:
            self._chunks.append(data[pos:] if pos else data)
        self.buffered = end - pos
        return items

    def _scan(self, data: bytes) -> tuple[list[Any], int, int]:
        """Cut complete frames from ``data``; return (frames, bytes consumed, bytes the next frame needs)."""
        frames: list[Frame] = []
        unpack = HEADER.unpack_from
        max_body = self.max_body
        pos = 0
        end = len(data)
        while end - pos >= HEADER_SIZE:
            magic, opcode, flags, request_id, length = unpack(data, pos)
            if magic != MAGIC or length > max_body:
                self.failure = framing_failure(magic, request_id, length, max_body)
                return frames, end, HEADER_SIZE
            stop = pos + HEADER_SIZE + length
            if stop > end:
                return frames, pos, stop - pos
            frames.append((opcode, flags, request_id, data[pos + HEADER_SIZE : stop]))
            pos = stop
        return frames, pos, HEADER_SIZE


def framing_failure(magic: int, request_id: int, length: int, max_body: int) -> FrameFailure:
    if magic != MAGIC:
        return FrameFailure(0, ErrorCode.BAD_FRAME, f"bad frame: magic byte 0x{magic:02x}, expected 0x{MAGIC:02x}")
    return FrameFailure(
        request_id,
        ErrorCode.MESSAGE_TOO_LARGE,
        f"frame body of {length} bytes exceeds the limit of {max_body} bytes",
    )
