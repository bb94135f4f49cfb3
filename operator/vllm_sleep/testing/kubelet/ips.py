"""Pod IPs from 127.0.0.0/8, plus each pod's private "localhost".

All simulated pods share this machine's network namespace. A real pod's 127.0.0.1 is private to
the pod; here each pod gets a private twin address instead (same low octets, second octet + 1),
so vLLM "bound to 127.0.0.1 inside the pod" stays unreachable on the pod IP, as in a real pod.
"""

from __future__ import annotations

import ipaddress


class IPPool:
    """Hands out 127.<base>.x.y addresses; released ones go to the back (delayed reuse keeps a
    just-freed address from colliding with a socket still closing)."""

    def __init__(self, base_octet: int = 10, size: int = 60000) -> None:
        if not 1 <= base_octet <= 250 or base_octet % 2:
            raise ValueError("base_octet must be even in 2..250 (odd octets hold private twins)")
        self._base = base_octet
        self._free = list(range(1, size + 1))
        self._used: dict[str, int] = {}

    def allocate(self, owner: str) -> str:
        if owner in self._used:
            return self._ip(self._used[owner])
        if not self._free:
            raise RuntimeError("pod IP pool exhausted")
        n = self._free.pop(0)
        self._used[owner] = n
        return self._ip(n)

    def release(self, owner: str) -> None:
        n = self._used.pop(owner, None)
        if n is not None:
            self._free.append(n)

    def _ip(self, n: int) -> str:
        return f"127.{self._base}.{n // 250}.{n % 250 + 1}"


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
