"""Who may serve a model name: the rule the gateway routes by and the operator reports. Pure.

Clients send a served model name; many teams' ModelDeployments share one gateway. Two rules
decide which ModelDeployment answers a name, and both the gateway (routing) and the operator
(the `Degraded` condition on a refused object) apply exactly this code, so what a team sees in
`kubectl get mdep` is what the gateway does:

- **Exposure policy** (optional, `--expose NAMESPACE=PATTERN[,PATTERN...]` on both processes):
  a namespace listed in the policy may only serve names matching one of its glob patterns; a
  namespace not listed may serve none. Without any `--expose` flag every name is allowed.
- **Oldest owner**: among the allowed claims on one name, the oldest ModelDeployment
  (creationTimestamp, then namespace/name) owns it; newer claims in any namespace are refused
  until the owner is gone. An unknown creation time counts as newest, so a claim can never jump
  ahead by hiding its age. Duplicate names therefore never move traffic silently.

docs/security.md ("Model names across namespaces") says the same for users.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

_UNKNOWN_AGE = float("inf")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ExposureError(ValueError):
    """An `--expose` value that cannot be read; the message names the bad part."""


@dataclass(frozen=True, order=True)
class Claim:
    """A ModelDeployment asking to serve `served_name`."""

    namespace: str
    name: str
    served_name: str = field(compare=False)
    created: float | None = field(default=None, compare=False)  # unix seconds; None = unknown


class RefusalReason(StrEnum):
    CONFLICT = "ServedNameConflict"  # an older ModelDeployment owns the name
    NOT_EXPOSED = "ServedNameNotExposed"  # the exposure policy does not allow it


@dataclass(frozen=True)
class Refusal:
    reason: RefusalReason
    message: str
    owner: tuple[str, str] | None = None  # (namespace, name) of the owner, for CONFLICT


@dataclass(frozen=True)
class ExposurePolicy:
    """Namespace -> glob patterns of the names it may serve. Empty: everything is allowed."""

    patterns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.patterns)

    def allows(self, namespace: str, served_name: str) -> bool:
        if not self.patterns:
            return True
        return any(fnmatch.fnmatchcase(served_name, p) for p in self.patterns.get(namespace, ()))

    def describe(self, namespace: str) -> str:
        pats = self.patterns.get(namespace)
        return ", ".join(pats) if pats else "none (namespace not listed in --expose)"

    @classmethod
    def parse(cls, values: Sequence[str]) -> ExposurePolicy:
        """`["team-a=team-a-*,shared-*", "team-b=llama-8b"]` -> a policy (repeatable flag)."""
        patterns: dict[str, list[str]] = {}
        for value in values:
            namespace, sep, rest = value.partition("=")
            namespace = namespace.strip()
            if not sep or not namespace:
                raise ExposureError(f"--expose {value!r}: expected NAMESPACE=PATTERN[,PATTERN]")
            if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
                raise ExposureError(f"--expose {value!r}: {namespace!r} is not a namespace name")
            pats = [p.strip() for p in rest.split(",") if p.strip()]
            if not pats:
                raise ExposureError(f"--expose {value!r}: no pattern after '='")
            patterns.setdefault(namespace, []).extend(pats)
        return cls({ns: tuple(ps) for ns, ps in patterns.items()})


@dataclass(frozen=True)
class Resolution:
    owners: Mapping[str, Claim]  # served name -> the claim that serves it
    refused: Mapping[tuple[str, str], Refusal]  # (namespace, name) -> why it serves nothing


def resolve(claims: Iterable[Claim], policy: ExposurePolicy | None = None) -> Resolution:
    policy = policy or ExposurePolicy()
    owners: dict[str, Claim] = {}
    refused: dict[tuple[str, str], Refusal] = {}
    ordered = sorted(claims, key=lambda c: (_UNKNOWN_AGE if c.created is None else c.created, c))
    for claim in ordered:
        key = (claim.namespace, claim.name)
        if not policy.allows(claim.namespace, claim.served_name):
            refused[key] = Refusal(
                RefusalReason.NOT_EXPOSED,
                f"served name {claim.served_name!r} is not exposed for namespace "
                f"{claim.namespace!r} (allowed: {policy.describe(claim.namespace)})",
            )
            continue
        owner = owners.setdefault(claim.served_name, claim)
        if owner is not claim:
            refused[key] = Refusal(
                RefusalReason.CONFLICT,
                f"served name {claim.served_name!r} belongs to the older ModelDeployment "
                f"{owner.namespace}/{owner.name}; this one gets no traffic until it is gone",
                (owner.namespace, owner.name),
            )
    return Resolution(owners, refused)
