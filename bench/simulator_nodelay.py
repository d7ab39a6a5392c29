"""``atlas-log simulate`` with TCP_NODELAY on the simulator's sockets (a separate process, like the CLI).

The simulator's handler writes the status line and headers, then the body, as two small ``send`` calls. With
Nagle's algorithm on, the second waits for the client's delayed ACK: about 40 ms per request on Linux loopback,
which real Atlas does not add. This launcher sets ``disable_nagle_algorithm`` (a standard ``StreamRequestHandler``
switch) and is otherwise exactly the ``atlas-log simulate`` command; ``--nagle`` keeps the stock behaviour.
"""

from __future__ import annotations

import sys

from atlas_log.simulator import server
from atlas_log.simulator.cli import simulate

if __name__ == "__main__":
    if "--nagle" in sys.argv:
        sys.argv.remove("--nagle")
    else:
        server.Handler.disable_nagle_algorithm = True
    simulate()
