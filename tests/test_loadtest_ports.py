"""Picking a node's SIP ports for a benchmark or load test: a gateway listens on its SIP port with UDP and TCP, and
`serve --workers N` on the N ports after it (gateway/workers.py), so a block must be free for both."""
import socket

from gateway.loadtest import command


def test_a_block_with_a_tcp_listener_in_it_is_not_chosen(monkeypatch):
    real = command.free_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        taken = tcp.getsockname()[1]
        assert command.port_free(taken, socket.SOCK_DGRAM)     # free for UDP: a UDP-only check would take it
        # the first candidates offered start the block just below the TCP listener; then any free port
        offered = iter([taken - 1] * 3)
        monkeypatch.setattr(command, "free_port", lambda kind=socket.SOCK_STREAM: next(offered, None) or real(kind))
        port = command.free_ports(3)
        assert not port <= taken < port + 3
        for p in range(port, port + 3):
            assert command.port_free(p, socket.SOCK_DGRAM) and command.port_free(p, socket.SOCK_STREAM)
