"""Who holds a message in flight, for the queue-logic tests written before confirms named their holder.

Since protocol version 2, `Broker.confirm`, `confirm_many`, `confirm_column`, `touch` and `release`
settle only what the given `Holding` holds. The tests of blocks, features and queues check other
rules (order, counts, deadlines, blocks); they call them on behalf of whoever holds the message,
as its own connection would: `held_by` finds that holder (a fresh, empty `Holding` when nobody
holds it, whose requests then get the answers any stranger's would). The holder rule itself is
checked in test_holders.py and by the model test.
"""

from __future__ import annotations

import struct

from dbqueue.core import Broker, Holding


def held_by(broker: Broker, ids: int | tuple[int, ...] | list[int] | bytes) -> Holding:
    """The holding of the first of ``ids`` (one id, a sequence of them, or a u64 column) held in flight."""
    if isinstance(ids, bytes):
        ids = list(struct.unpack(f">{len(ids) // 8}Q", ids))
    for id_ in [ids] if isinstance(ids, int) else ids:
        record = broker.records.get(id_)
        if record is not None and record.held is not None:
            return record.held
        block = broker.blocks.find(id_)
        if block is not None and block.holds(id_):
            return block.held
    return Holding()
