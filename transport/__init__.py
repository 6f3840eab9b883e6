"""Live calls over gRPC: the .agc packets streamed from a sender to an edge receiver.

`import transport` stays light; grpc loads with `transport.sender` / `transport.receiver`.
"""

import os

from codec.errors import GraceError

# gRPC's C core logs connection events (GOAWAY at a normal hang-up...) on stderr at INFO;
# keep its errors only, unless the user asks for more. Read when grpc loads, so set here.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


class TransportError(GraceError, ConnectionError):
    """A call failed: refused (token, version, size), unreachable, or lost for good."""


__all__ = ["TransportError"]
