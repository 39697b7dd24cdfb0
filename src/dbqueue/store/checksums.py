"""Payload checksums: what each stored payload carries so that damage is found, not served.

Theory of operation
-------------------
SQLite checks its own structure (``PRAGMA quick_check``: pages, B-trees, record
headers) but not the bytes of a value: a bit flipped inside a payload reads
back as a different, valid-looking payload. So every row that holds payloads
carries a CRC32C (the Castagnoli polynomial, computed in hardware where the
CPU has it) of what it stores:

* a message row: `row_crc` of its payload, started from its id;
* a pack row: `pack_crc` of its ``sizes`` column then its payloads, started
  from its ``first_id``: one checksum for the whole row, so a pack costs one
  call over contiguous bytes, not one per member.

Starting each checksum from the row's id (its low 32 bits) ties the payload
to the id it is served under: a row whose id was damaged fails too.
`Store.load` verifies every row that holds a live message before the server
serves any; a mismatch names the damaged message ids (for a pack: all of its
live members, which can no longer be told apart) and stops the start.
The checksums cover payloads and ids, not the queue a row belongs to, its
delivery count or due time, nor a pack's gone bitmap.

Why CRC32C from google-crc32c, not `zlib.crc32`: both cost about the same
per call for small payloads (the call dominates), but the hardware CRC32C is
much faster per byte, which is what a whole pack or a large message costs;
the package is Google's, Apache-licensed, with wheels for the usual platforms
(without its C extension it falls back to pure Python and warns). The
figures are in the commit that brought it in.
"""

from __future__ import annotations

from collections.abc import Callable

import google_crc32c

_MASK = 0xFFFFFFFF

# crc32c(data) continued from ``crc``: the C extension's, untyped.
_extend: Callable[[int, bytes], int] = google_crc32c.extend


def row_crc(id_: int, data: bytes) -> int:
    """The checksum stored with message ``id_`` whose payload is ``data``."""
    return _extend(id_ & _MASK, data)


def pack_crc(first_id: int, sizes: bytes, data: bytes) -> int:
    """The checksum stored with a pack: its ``sizes`` column, then its joined payloads."""
    return _extend(_extend(first_id & _MASK, sizes), data)
