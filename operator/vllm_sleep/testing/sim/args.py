"""A `vllm serve` command line, tolerated the way a simulator must: known flags are read, every
other vLLM flag is skipped with a warning instead of failing the container.

argparse cannot do this: it does not know which unknown flags take a value. The rule here is
`--flag=value` always carries its value; `--flag value` takes the next token as its value unless
the flag is a known vLLM boolean (or `--no-...`), or the next token is itself an option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# vLLM flags this simulator reads, by arity. "+" takes one or more values (argparse nargs="+").
VALUE_FLAGS = {
    "--model",
    "--host",
    "--port",
    "--gpu-memory-utilization",
    "--max-model-len",
    "--max-num-seqs",
    "--kv-cache-memory-bytes",
    "--kv-cache-memory",  # argparse accepts this prefix of --kv-cache-memory-bytes
    "--speculative-config",
    "--speculative-model",  # before --speculative-config
}
MULTI_FLAGS = {"--served-model-name", "--api-key", "--sleep-preserve-parameter-names"}
BOOL_FLAGS = {"--enable-sleep-mode", "--enable-server-load-tracking"}

# Simulator-only flags (all take a value). Each also has a VLLM_SIM_* env twin (see config.py).
SIM_FLAGS = {
    "--profile",
    "--device-memory",
    "--weights-size",
    "--residual-memory",
    "--kv-cache-margin",
    "--weight-allocations",
    "--vllm-version",
    "--fail-sleeps",
    "--time-scale",
    "--default-max-tokens",
    "--profiling-fraction",
    "--load-seconds",
    "--first-sleep-seconds",
    "--sleep-seconds",
    "--wake-seconds",
    "--level2-sleep-seconds",
    "--reload-seconds",
    "--remap-seconds",
    "--weights-map-seconds",
    "--release-kv-seconds",
    "--ttft-seconds",
    "--itl-seconds",
    "--call-overhead-seconds",
}

# Boolean vLLM flags we ignore: without this list `--trust-remote-code MODEL` would eat MODEL.
KNOWN_VLLM_BOOLEANS = {
    "--trust-remote-code",
    "--enforce-eager",
    "--enable-prefix-caching",
    "--enable-chunked-prefill",
    "--disable-log-requests",
    "--disable-log-stats",
    "--enable-log-requests",
    "--enable-auto-tool-choice",
    "--enable-lora",
    "--disable-custom-all-reduce",
    "--disable-frontend-multiprocessing",
    "--enable-prompt-tokens-details",
    "--enable-request-id-headers",
    "--disable-fastapi-docs",
    "--enable-expert-parallel",
    "--headless",
    "--enable-nccl-comm-suspend",
    "--sleep-mode-offload-cudagraph",
    "--enable-cumem-allocator",
    "--async-scheduling",
    "--skip-tokenizer-init",
    "--disable-uvicorn-access-log",
    "--enable-force-include-usage",
    "--enable-tokenizer-info-endpoint",
    "--return-tokens-as-token-ids",
    "--disable-sliding-window",
    "--enable-eplb",
    "--allow-credentials",
    "--enable-ssl-refresh",
    "--api-server-count-auto",
}
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


@dataclass
class ParsedArgs:
    values: dict[str, list[str]] = field(default_factory=dict)  # "--port" -> ["8000"]
    positionals: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # unknown flags as written, for warnings

    def last(self, flag: str) -> str | None:
        vals = self.values.get(flag)
        return vals[-1] if vals else None

    def has(self, flag: str) -> bool:
        return flag in self.values


def _is_value(token: str) -> bool:
    return not token.startswith("-") or bool(_NUMBER.fullmatch(token))


def parse_argv(argv: list[str]) -> ParsedArgs:
    out = ParsedArgs()
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":
            out.positionals += argv[i:]
            break
        if not tok.startswith("-") or tok == "-":
            out.positionals.append(tok)
            continue
        flag, eq, inline = tok.partition("=")
        flag = flag.replace("_", "-") if flag.startswith("--") else flag
        if flag in BOOL_FLAGS:
            # argparse BooleanOptionalAction also accepts --flag=true|false in newer vLLM.
            out.values[flag] = [inline if eq else "true"]
        elif flag in MULTI_FLAGS:
            vals = [inline] if eq else []
            while not eq and i < len(argv) and _is_value(argv[i]):
                vals.append(argv[i])
                i += 1
            if not vals:
                raise ValueError(f"argument {flag}: expected at least one argument")
            out.values[flag] = vals
        elif flag in VALUE_FLAGS or flag in SIM_FLAGS:
            if eq:
                out.values.setdefault(flag, []).append(inline)
            elif i < len(argv) and _is_value(argv[i]):
                out.values.setdefault(flag, []).append(argv[i])
                i += 1
            else:
                raise ValueError(f"argument {flag}: expected one argument")
        elif flag in ("-h", "--help"):
            out.values["--help"] = ["true"]
        else:
            takes_value = (
                not eq
                and flag not in KNOWN_VLLM_BOOLEANS
                and not flag.startswith("--no-")
                and i < len(argv)
                and _is_value(argv[i])
            )
            if takes_value:
                out.ignored.append(f"{tok} {argv[i]}")
                i += 1
            else:
                out.ignored.append(tok)
    return out
