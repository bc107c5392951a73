"""Whether the c10d rendezvous of a multi-node launch can be joined from here (`dpstudy.launch`).

Checked before torchrun starts, so that an endpoint that does not resolve or accept connections, or
a hostname c10d cannot look up, is one line and exit status 2 instead of minutes of c10d retries.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Mapping

from .errors import UserError

# How long a node waits for a rendezvous hosted elsewhere to resolve and accept connections.
RDZV_WAIT = "DPSTUDY_RDZV_WAIT_S"
RDZV_WAIT_DEFAULT_S = 20.0


def check_rendezvous(endpoint: str, where: str, wait_s: float) -> None:
    """Return once the c10d rendezvous at ``endpoint`` (host:port, set in ``where``) can be joined
    from here; raise `UserError` if it still cannot after ``wait_s`` seconds.

    On the node that hosts the store (the endpoint is one of its own addresses, as torchrun
    decides), torchrun creates it: only this machine's hostname is checked there, which c10d
    resolves to make that decision. Elsewhere the endpoint must resolve and accept a TCP
    connection; both are retried until ``wait_s`` has passed, since its node may start later."""
    host, port = _split(endpoint)
    this = socket.gethostname()
    if not _loopback_name(host) and host != this and _resolve(this, None) is None:
        raise UserError(
            f"this machine's hostname {this!r} does not resolve, and torchrun's c10d rendezvous "
            f"({where}: {endpoint}) looks it up: add it to /etc/hosts (e.g. '127.0.1.1 {this}') "
            "or run on one node"
        )
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        addresses = _resolve(host, port)
        if addresses is not None and (host == this or any(_local(a) for a in addresses)):
            return  # this node hosts the store: torchrun starts it here
        problem = "does not resolve" if addresses is None else _connect_problem(addresses, deadline)
        if problem is None:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise UserError(
                f"rendezvous endpoint {endpoint} ({where}) {problem} from this node after {wait_s:g} s: "
                "it must be host:port of the node that hosts the rendezvous (e.g. the first node), "
                f"reachable from every node, with the launch started there too; {RDZV_WAIT}=<seconds> "
                "waits longer for that node"
            )
        if not waiting:
            print(f"[launch] rendezvous {endpoint} {problem} yet: waiting up to {wait_s:g} s for its node", flush=True)
            waiting = True
        time.sleep(min(0.5, left))


def rendezvous_problem(host: str, port: int, timeout_s: float = 2.0) -> str | None:
    """Why ``host:port`` cannot be connected to now (None: it can): one attempt, for each address."""
    addresses = _resolve(host, port)
    if addresses is None:
        return "does not resolve"
    return _connect_problem(addresses, time.monotonic() + timeout_s)


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve(host: str, port: int | None) -> list[tuple] | None:
    """(family, sockaddr) of each TCP address ``host`` resolves to; None if it does not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return None
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos] or None


def _local(address: tuple) -> bool:
    """Whether an address is one of this machine's (it can be bound here)."""
    family, sockaddr = address
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((sockaddr[0], 0, *sockaddr[2:]))
        return True
    except OSError:
        return False


def _connect_problem(addresses: list[tuple], deadline: float) -> str | None:
    """None once a TCP connection to one of ``addresses`` succeeds (closed at once: c10d's store
    takes a client that leaves), else what went wrong with the last one, briefly."""
    problem = "is not reachable"
    for family, sockaddr in addresses:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(max(0.2, min(2.0, deadline - time.monotonic())))
                s.connect(sockaddr)
            return None
        except ConnectionRefusedError:
            problem = "refuses connections (nothing listens there)"
        except TimeoutError:
            problem = "does not answer"
        except OSError as exc:
            problem = f"is not reachable ({exc.strerror or exc})"
    return problem


def wait_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """How long to wait for a rendezvous hosted elsewhere: DPSTUDY_RDZV_WAIT_S, else the default."""
    text = environ.get(RDZV_WAIT, "").strip()
    if not text:
        return RDZV_WAIT_DEFAULT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UserError(f"{RDZV_WAIT}={text!r}: expected a number of seconds >= 0")
    return value
