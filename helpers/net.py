"""Network helpers shared by the course's servers and their tests."""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port on ``host`` that nothing listens on right now (the operating system picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
