"""Every contract between processes has one home in `vllm_sleep/api/`: copies must not return.

Each rule names a contract, the string literals that would mean a copy of it, and where such
literals may legitimately appear. The scan reads string constants only (not comments or
docstrings), so prose may still name the things it explains. To guard a new contract, add a
`Rule` to RULES. docs/architecture.md lists the contracts and their modules.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

import vllm_sleep
from vllm_sleep.api.model_deployment import ModelDeploymentSpec

PACKAGE = Path(vllm_sleep.__file__).parent


def _spec_aliases(model: type[BaseModel]) -> set[str]:
    """camelCase field names of a spec and its nested models (generic ones like "model" skipped)."""
    out: set[str] = set()
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if any(c.isupper() for c in alias):
            out.add(alias)
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out |= _spec_aliases(arg)
    return out


@dataclass(frozen=True)
class Rule:
    contract: str  # what has one home, and where
    pattern: str  # a string literal matching this is a copy of the contract
    scope: tuple[str, ...] = ("",)  # package-relative path prefixes the rule applies to
    allowed: tuple[str, ...] = ("api/",)  # prefixes exempt from it


RULES = (
    Rule("demand Lease name: api.demand.demand_lease_name", r"-demand$"),
    Rule("Lease bodies: api.demand.demand_lease / renew_patch", r"^coordination\.k8s\.io/v1$"),
    Rule(
        "demand Lease fields: api.demand (the sim-kubelet's node heartbeats are another Lease)",
        r"^(renewTime|holderIdentity|leaseDurationSeconds)$",
        allowed=("api/", "testing/kubelet/"),
    ),
    Rule("sleep-request annotation: api.names.ANNOTATION_SLEEP_REQUEST", r"sleep-request"),
    Rule("control token Secret name: api.names.token_secret_name", r"-control-token$"),
    Rule(
        "OpenAI error types: api.openai_errors (the simulator answers as vLLM does)",
        r"^(invalid_request|authentication|permission|not_found|rate_limit|server)_error$"
        r"|^(BadRequest|Authentication|NotFound|MethodNotAllowed|Conflict|InternalServer"
        r"|BadGateway|ServiceUnavailable|GatewayTimeout)Error$",
        allowed=("api/", "testing/sim/"),
    ),
    Rule(
        "agent refusal codes: api.openai_errors.ErrorCode / AGENT_REFUSALS",
        r"^(hold_timeout|queue_full|engine_unavailable|engine_unreachable)$",
    ),
    Rule(
        "the public surface (agent allowlist, gateway routes): api.routes.ROUTES",
        r"^/v1/(chat/completions|completions|embeddings|responses|messages|score|rerank"
        r"|audio/\w+)$|^/(pooling|classify|score|rerank|v2/rerank|inference/v1/generate"
        r"|tokenize|detokenize)$",
        scope=("gateway/", "agent/", "controller/", "reconcile/"),
    ),
    Rule(
        "ModelDeployment fields and defaults: api.model_deployment.ModelDeployment.from_body",
        "^(" + "|".join(sorted(_spec_aliases(ModelDeploymentSpec))) + ")$",
        scope=("gateway/", "agent/", "ctl.py"),
    ),
)


@dataclass(frozen=True)
class Hit:
    path: str
    line: int
    value: str


def _literals(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        is_str = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_str and id(node) not in docstrings:
            yield node.lineno, node.value


def copies(rule: Rule, root: Path = PACKAGE) -> list[Hit]:
    found = []
    regex = re.compile(rule.pattern)
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(rule.scope) or rel.startswith(rule.allowed):
            continue
        for line, value in _literals(path):
            if regex.search(value):
                found.append(Hit(rel, line, value))
    return found


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.contract.split(":")[0])
def test_no_copy_of_a_contract_outside_its_home(rule: Rule) -> None:
    hits = copies(rule)
    assert not hits, f"{rule.contract}; copies found:\n" + "\n".join(
        f"  operator/vllm_sleep/{h.path}:{h.line}: {h.value!r}" for h in hits
    )


def test_the_scan_finds_a_copy_and_ignores_prose(tmp_path: Path) -> None:
    # The guard itself must be able to fail: a copied Lease name in code is found, the same
    # words in a docstring or a comment are not.
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "lease.py").write_text(
        '"""Renews the `<mdep>-demand` Lease."""\n'
        "# <mdep>-demand\n"
        'def name(m):\n    """The <mdep>-demand Lease."""\n    return f"{m}-demand"\n'
    )
    (rule,) = [r for r in RULES if r.pattern == r"-demand$"]
    assert copies(rule, tmp_path) == [Hit("gateway/lease.py", 5, "-demand")]


def test_spec_fields_are_read_from_the_api_model() -> None:
    aliases = _spec_aliases(ModelDeploymentSpec)
    assert {"maxQueued", "onRequest", "servedModelName", "idleTimeout"} <= aliases
