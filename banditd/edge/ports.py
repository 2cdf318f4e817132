"""Listening ports: a port another process already serves is refused, with one clear line.

gRPC sets SO_REUSEPORT on its listeners by default, so a second `banditd serve` on a taken port
would bind as well and the kernel would split connections between two servers with different
databases and signing keys. So a single server binds with ``grpc.so_reuseport`` 0: the kernel
then refuses it any port that is already served, and refuses every later listener its port.

Only the workers of one `serve --workers N` share a port (banditd.commands.workers). Their parent
first probes the port (`check_free`: a bind with SO_REUSEADDR, so connections left in TIME_WAIT do
not count, and without SO_REUSEPORT, so any listener does), then holds it while the group runs
(`reserved`: a socket bound with SO_REUSEPORT alone, never listening, so it takes no
connections). The kernel lets the workers (SO_REUSEPORT, same user) bind beside it, and refuses
another banditd's probe and a single server, so a second group cannot join the first. A lock
file would cover the second part only between banditd processes that agree on its path; bind
rules hold against every program, and vanish with the process. The probe is also run before a
single server binds, so the common clash is reported before gRPC logs its own bind error.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from typing import Any

# (what, the setting that changes it) of each listener of `banditd serve`.
GRPC = ("gRPC", "--listen (env BANDITD_LISTEN)")
HEALTH = ("health", "env BANDITD_HEALTH_LISTEN")
METRICS = ("metrics", "--metrics-listen (env BANDITD_METRICS_LISTEN; empty: no /metrics)")


class PortInUse(OSError):
    """Another process listens on the port (the message names it and how to choose another)."""

    def __init__(self, listen: str, what: str, setting: str) -> None:
        port = listen.rpartition(":")[2]
        super().__init__(
            f"{what} port {port} ({listen}) is already served by another process: stop it, "
            f"or choose another address with {setting}"
        )
        self.listen = listen


Address = tuple[Any, ...]  # a socket address as getaddrinfo gives it: (host, port[, ...])


def _addresses(listen: str) -> list[tuple[int, Address]]:
    """(family, socket address) of each address HOST:PORT binds (a name may give several)."""
    host, _, port = listen.rpartition(":")
    infos = socket.getaddrinfo(
        host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    return [(family, address) for family, _, _, _, address in infos]


def _bind(family: int, address: Address, option: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _any_port(listen: str) -> bool:
    """No address, or port 0: whatever is free when bound, nothing to check or hold."""
    return not listen or int(listen.rpartition(":")[2]) == 0


def check_free(listen: str, what: str, setting: str) -> None:
    """PortInUse when a process listens on HOST:PORT (port 0 or an empty address: no check).

    Other bind errors (an address this host does not have, a privileged port) are left to the
    real bind, which reports them."""
    if _any_port(listen):
        return
    for family, address in _addresses(listen):
        try:
            _bind(family, address, socket.SO_REUSEADDR).close()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(listen, what, setting) from None


@contextlib.contextmanager
def reserved(listen: str, what: str, setting: str) -> Iterator[None]:
    """Hold a free HOST:PORT for this user's SO_REUSEPORT listeners (the workers) while inside;
    PortInUse when a process already listens on it (port 0 or an empty address: nothing held)."""
    check_free(listen, what, setting)
    with contextlib.ExitStack() as held:
        for family, address in [] if _any_port(listen) else _addresses(listen):
            try:
                held.enter_context(_bind(family, address, socket.SO_REUSEPORT))
            except OSError as exc:  # taken between the probe and here
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(listen, what, setting) from None
                raise
        yield
