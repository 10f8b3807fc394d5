"""helpers.net: a free port is one a server can bind on 127.0.0.1 right away."""
import socket

from helpers.net import free_port


def test_free_port_can_be_bound():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:  # nothing holds it: a server started next can listen there
        s.bind(("127.0.0.1", port))
        s.listen()
