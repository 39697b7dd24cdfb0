"""Dead letters, looked at and redriven: the seconds API, peek and move.

A queue "orders" sends a message that fails five deliveries to "orders-dead". A
worker takes each order with a visibility timeout of 2 s (every duration is in
seconds, and named), and gives a poison one back at once with `release`; after
its fifth delivery it lands in the dead-letter queue, which remembers where it
came from. `peek` shows it without delivering it; once the bug is fixed, `move`
sends it back to the end of "orders" in one step on the server. Start a server
first: `dbqueue serve` (or `python examples/server.py`).

    python examples/dead_letters.py [--address 127.0.0.1:3003]
"""

from __future__ import annotations

import argparse
import contextlib

from dbqueue import Client, NoSuchQueue


def work(client: Client, fixed: bool) -> list[bytes]:
    """Take every order there is; return those done. Before the fix, "poison" fails each time."""
    done = []
    while (message := client.read("orders", visibility_timeout=2.0, wait=0.2)) is not None:
        if message.data == b"poison" and not fixed:
            client.release(message.id)  # failed: back to the queue now, one delivery more
            continue
        client.confirm(message.id)
        done.append(message.data)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:3003")
    args = parser.parse_args()
    with Client.connect(args.address, timeout=10.0) as client:
        for name in ("orders", "orders-dead"):
            with contextlib.suppress(NoSuchQueue):
                client.delete(name)
        client.create("orders-dead")
        client.create("orders", max_deliveries=5, dead_letter_queue="orders-dead", visibility_timeout=30.0)
        for order in (b"book", b"poison", b"lamp"):
            client.send("orders", order)

        print("done:", work(client, fixed=False))
        for dead in client.peek("orders-dead"):  # a look: no delivery is counted
            origin = dead.origin
            assert origin is not None
            print(
                f"dead letter {dead.data!r}: from {origin.queue!r} (id {origin.id}), "
                f"delivered {origin.deliveries} times there, {dead.state}"
            )

        moved = client.move("orders-dead", "orders")  # the fix is out: redrive
        print(f"moved {moved} back; done:", work(client, fixed=True))
        client.delete("orders")
        client.delete("orders-dead")


if __name__ == "__main__":
    main()
