"""References in code and docs lead somewhere a reader of the repository can follow.

- Nothing cites the design notes that live outside the repository; the project's own docs
  (docs/vllm.md, docs/architecture.md) carry what the code relies on.
- Every relative markdown link in the docs, README and CONTRIBUTING points at a file that
  exists, and an anchor into a markdown file names one of its headings.
- Every `docs/<page>.md[#anchor]` mentioned in code, tests or docs exists, anchor included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED_DIRS = ("operator", "tests", "bench", "docs")
SCANNED_FILES = ("README.md", "CONTRIBUTING.md")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".json", ".cfg", ".ini", ".sh"}
SKIPPED_PARTS = {"__pycache__", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache"}

# Spelled in pieces so that this file does not cite them itself.
# The last two alternatives: a section number of those notes, after the word contract or alone
# in parentheses (an RFC's sections are always named with the RFC).
EXTERNAL_NOTES = re.compile(
    "DESIGN"
    + r"\.md|VLLM_"
    + "CONTRACT"
    + r"|\b[Cc]ontract\b[^§\n]{0,10}§\s*\d|\(§\s*\d+(?:,\s*§\s*\d+)*\)"
)

MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOC_MENTION = re.compile(r"(?<![\w/.-])(docs/[\w.-]+\.md)(#[\w-]+)?")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
FENCE = re.compile(r"^\s*(```|~~~)")


def _scanned_files() -> Iterator[Path]:
    for name in SCANNED_FILES:
        yield ROOT / name
    for top in SCANNED_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT).parts
            if any(p in SKIPPED_PARTS or p.endswith(".egg-info") for p in rel):
                continue
            if path.is_file() and path.suffix in TEXT_SUFFIXES:
                yield path


def _markdown_files() -> list[Path]:
    return [ROOT / n for n in SCANNED_FILES] + sorted((ROOT / "docs").glob("*.md"))


def _prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines outside fenced code blocks, numbered from 1."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation dropped,
    spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub renders for a markdown file (repeated headings get -1, -2, ...)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _check_target(target: Path, anchor: str | None, where: str) -> str | None:
    if not target.exists():
        return f"{where}: {_shown(target)} does not exist"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return f"{where}: no heading for #{anchor} in {_shown(target)}"
    return None


def test_slug_follows_github() -> None:
    assert slug("Agent control API (port 8002, `Authorization: Bearer <token>`, else 401)") == (
        "agent-control-api-port-8002-authorization-bearer-token-else-401"
    )
    assert slug("vLLM 0.34") == "vllm-034"
    assert slug("Shared devices: the startup check, OOM on wake") == (
        "shared-devices-the-startup-check-oom-on-wake"
    )
    assert slug("`sleep_gauge` and [links](x.md)") == "sleep_gauge-and-links"


def test_nothing_cites_notes_outside_the_repository() -> None:
    hits = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if EXTERNAL_NOTES.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not hits, "cite docs/vllm.md or docs/architecture.md instead:\n" + "\n".join(hits)


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_markdown_links_resolve(doc: Path) -> None:
    broken = []
    for number, line in _prose_lines(doc.read_text(encoding="utf-8")):
        for link in MD_LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
                continue
            file_part, _, anchor = link.partition("#")
            target = (doc.parent / file_part).resolve() if file_part else doc
            problem = _check_target(target, anchor or None, f"{doc.name}:{number} ({link})")
            if problem:
                broken.append(problem)
    assert not broken, "\n".join(broken)


def test_mentioned_doc_pages_and_anchors_exist() -> None:
    broken = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for page, anchor in DOC_MENTION.findall(line):
                where = f"{path.relative_to(ROOT)}:{number}"
                problem = _check_target(ROOT / page, anchor.lstrip("#") or None, where)
                if problem:
                    broken.append(problem)
    assert not broken, "\n".join(broken)


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## A section\n\n```\n## not a heading\n```\n", encoding="utf-8")
    assert anchors(page) == {"title", "a-section"}
    assert _check_target(page, "a-section", "x") is None
    assert _check_target(page, "not-a-heading", "x") is not None
    assert _check_target(tmp_path / "missing.md", None, "x") is not None
    assert EXTERNAL_NOTES.search("see " + "DESIGN" + ".md")
    assert EXTERNAL_NOTES.search("(VLLM_" + "CONTRACT §3)")
    assert EXTERNAL_NOTES.search("as vLLM does (con" + "tract §1)")
    assert EXTERNAL_NOTES.search("Con" + "tract table §2 (vLLM 0.33.0)")
    assert EXTERNAL_NOTES.search("liveness only (" + "§3).")
    assert not EXTERNAL_NOTES.search("RFC 9110 §7.6.1; the agent's control contract")
    assert not EXTERNAL_NOTES.search("(RFC 9112 §6.1)")
    assert DOC_MENTION.findall("docs/vllm.md#sleep-levels, not vllm/docs/x.md") == [
        ("docs/vllm.md", "#sleep-levels")
    ]
