"""Start a default dbqueue server on 127.0.0.1:3003 (Ctrl-C stops it).

The same as `dbqueue serve`; shown here as the few lines that embed a server.
"""

import logging

from dbqueue.server import Server, run

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(Server("127.0.0.1", 3003))
