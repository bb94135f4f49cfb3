"""The suite's own xdist scheduling (tests/conftest.py), run on a small copy of the layout with
real workers: with a given cluster every cluster and e2e test runs on one worker (their operators
would fight over a shared cluster), cluster before e2e, and each worker runs its share in the
order cluster, e2e, contract, unit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RECORD = """
import os
from pathlib import Path


def test_{name}():
    with Path(os.environ["RECORD_TO"]).open("a") as f:
        f.write(f"{{os.environ.get('PYTEST_XDIST_WORKER', 'main')}} {folder} {name}\\n")
"""


def run_layout(tmp_path: Path, workers: int, **env: str) -> list[tuple[str, str, str]]:
    tests = tmp_path / "tests"
    for folder in ("unit", "contract", "e2e", "cluster"):  # written in reverse of RUN_ORDER
        (tests / folder).mkdir(parents=True)
        for i in range(3):
            name = f"{folder}_{i}"
            (tests / folder / f"test_{name}.py").write_text(RECORD.format(name=name, folder=folder))
    shutil.copy(ROOT / "tests" / "conftest.py", tests / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    record = tmp_path / "record.txt"
    clean = {
        k: v for k, v in os.environ.items() if k not in ("VLLM_SLEEP_KUBECONFIG", "KUBECONFIG")
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers)],
        cwd=tmp_path,
        env={**clean, **env, "RECORD_TO": str(record)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [tuple(line.split()) for line in record.read_text().splitlines()]
    return rows  # type: ignore[return-value]


def test_a_given_cluster_keeps_cluster_and_e2e_tests_on_one_worker_in_the_suite_order(
    tmp_path: Path,
) -> None:
    rows = run_layout(tmp_path, 2, VLLM_SLEEP_KUBECONFIG=str(tmp_path / "given.kubeconfig"))
    assert len(rows) == 12
    needing = [(worker, folder) for worker, folder, _ in rows if folder in ("cluster", "e2e")]
    assert len({worker for worker, _ in needing}) == 1, rows
    assert [folder for _, folder in needing] == ["cluster"] * 3 + ["e2e"] * 3
    rank = {"cluster": 0, "e2e": 1, "contract": 2, "unit": 3}
    for worker in {w for w, _, _ in rows}:  # each worker runs its share in RUN_ORDER
        ranks = [rank[folder] for w, folder, _ in rows if w == worker]
        assert ranks == sorted(ranks), rows
