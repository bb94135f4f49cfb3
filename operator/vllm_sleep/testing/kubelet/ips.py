"""Pod IPs from 127.0.0.0/8, plus each pod's private "localhost".

All simulated pods share this machine's network namespace. A real pod's 127.0.0.1 is private to
the pod; here each pod gets a private twin address instead (same low octets, second octet + 1),
so vLLM "bound to 127.0.0.1 inside the pod" stays unreachable on the pod IP, as in a real pod.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

POD_PORTS = (8000, 8002)  # the agent's public and control ports on the pod IP
TWIN_PORTS = (8001,)  # vLLM on the pod's private 127.0.0.1


class IPPool:
    """Hands out 127.<base>.x.y addresses; released ones go to the back (delayed reuse keeps a
    just-freed address from colliding with a socket still closing).

    `probe(ip)` (the sim-kubelet passes `address_free`) skips addresses another process on this
    host listens on: several local clusters (a dev cluster, a test run) share one loopback.
    The probe only sees sockets that exist at allocation time, and another cluster's pod may
    bind its (already allocated) address later, so the sim-kubelet also passes a random `start`:
    clusters then hand out addresses from different parts of the range and rarely meet.
    """

    def __init__(
        self,
        base_octet: int = 10,
        size: int = 60000,
        probe: Callable[[str], bool] | None = None,
        start: int = 0,
    ) -> None:
        if not 1 <= base_octet <= 250 or base_octet % 2:
            raise ValueError("base_octet must be even in 2..250 (odd octets hold private twins)")
        self._base = base_octet
        first = start % size
        self._free = list(range(1 + first, size + 1)) + list(range(1, 1 + first))
        self._used: dict[str, int] = {}
        self._probe = probe

    def allocate(self, owner: str) -> str:
        if owner in self._used:
            return self._ip(self._used[owner])
        for i, n in enumerate(self._free):
            if self._probe is None or self._probe(self._ip(n)):
                del self._free[i]
                self._used[owner] = n
                return self._ip(n)
        raise RuntimeError("pod IP pool exhausted")

    def release(self, owner: str) -> None:
        n = self._used.pop(owner, None)
        if n is not None:
            self._free.append(n)

    def _ip(self, n: int) -> str:
        return f"127.{self._base}.{n // 250}.{n % 250 + 1}"


def address_free(pod_ip: str) -> bool:
    """True when no process on this host listens on the pod's ports (or its twin's)."""
    twin = private_twin(pod_ip)
    for host, ports in ((pod_ip, POD_PORTS), (twin, TWIN_PORTS)):
        for port in ports:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
                try:
                    s.bind((host, port))
                except OSError:
                    return False
    return True


def private_twin(pod_ip: str) -> str:
    """The address that stands for 127.0.0.1 inside the pod with this IP."""
    a, b, c, d = ipaddress.IPv4Address(pod_ip).packed
    if a != 127:
        raise ValueError(f"simulated pod IPs are loopback, got {pod_ip}")
    return f"127.{b + 1}.{c}.{d}"


def localize(host: str, pod_ip: str) -> str:
    """Map a bind/dial host as written in a pod spec to where it lives in the simulation."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return private_twin(pod_ip)
    if host in ("0.0.0.0", "::", ""):
        return pod_ip
    return host
