"""The `vllm-sleep` command: one entry point, one subcommand per process.

Each subcommand lives in its own module and is imported lazily, so `vllm-sleep sim` does not pay
for kopf and `vllm-sleep agent` (a sidecar in every model pod) starts fast.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, help). Each module exposes `main(argv: list[str]) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("vllm_sleep.controller.main", "run the operator (kopf)"),
    "gateway": ("vllm_sleep.gateway.main", "run the OpenAI-compatible gateway"),
    "agent": ("vllm_sleep.agent.main", "run the per-pod sleep guard (sidecar)"),
    "sim": ("vllm_sleep.testing.sim.main", "run the vLLM simulator (`vllm serve` compatible)"),
    "dev": (
        "vllm_sleep.testing.cluster.main",
        "local control plane: build | up | down | status | env",
    ),
    "demo": ("vllm_sleep.demo", "run the demo on the local cluster"),
    "status": ("vllm_sleep.ctl", "show ModelDeployments and their state"),
    "wake": ("vllm_sleep.ctl", "wake a model (renews its demand Lease)"),
    "sleep": ("vllm_sleep.ctl", "put a model to sleep"),
}


def version() -> str:
    """The installed package's version (what the operator's image was built from)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("vllm-sleep-operator")
    except PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def usage() -> str:
    lines = ["usage: vllm-sleep <command> [args] | --version", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] in ("--version", "version"):
        print(f"vllm-sleep {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"vllm-sleep: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    if module.__name__ == "vllm_sleep.ctl":
        rest = [name, *rest]
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
