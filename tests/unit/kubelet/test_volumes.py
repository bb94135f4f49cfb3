"""The sim-kubelet's emptyDir volumes: a directory per volume, paths rewritten per container."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vllm_sleep.api import ModelDeploymentSpec, names
from vllm_sleep.reconcile.builders import Owner, model_pod
from vllm_sleep.testing.kubelet.volumes import PodVolumes


def pod(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p/0", "namespace": "ns"},
        "spec": {"volumes": volumes, "containers": [{"name": "c", "volumeMounts": mounts}]},
    }


def test_paths_under_a_mount_are_rewritten_in_args_and_env(tmp_path: Path) -> None:
    p = pod(
        [{"name": "run", "emptyDir": {}}, {"name": "cache", "persistentVolumeClaim": {}}],
        [
            {"name": "run", "mountPath": "/var/run/x/"},
            {"name": "run", "mountPath": "/var/run/x/deep", "subPath": "sub"},
            {"name": "cache", "mountPath": "/cache"},
        ],
    )
    vols = PodVolumes(p, root=tmp_path)
    vols.create()
    d = vols.directory("run")
    assert d is not None and d.is_dir() and d.is_relative_to(tmp_path)
    view = vols.view(p["spec"]["containers"][0])
    args = ["--log", "/var/run/x/a.log", "--cfg=/var/run/x", "/var/run/x/deep/f", "/var/run/xy"]
    assert view.args(args) == ["--log", f"{d}/a.log", f"--cfg={d}", f"{d}/sub/f", "/var/run/xy"]
    # Other volume kinds are not simulated: their paths stay as written.
    assert view.env({"A": "/var/run/x/a", "B": "/cache/m", "C": "x=/var/run/x"}) == {
        "A": f"{d}/a",
        "B": "/cache/m",
        "C": "x=/var/run/x",
    }
    vols.remove()
    assert not d.exists() and list(tmp_path.iterdir()) == []


def test_a_volume_outlives_container_restarts(tmp_path: Path) -> None:
    p = pod([{"name": "run", "emptyDir": {}}], [{"name": "run", "mountPath": "/run"}])
    vols = PodVolumes(p, root=tmp_path)
    vols.create()
    d = vols.directory("run")
    assert d is not None
    (d / "kept").write_text("x")
    vols.create()  # a second start of the pod's containers: the same directory, files kept
    assert vols.directory("run") == d and (d / "kept").exists()


def test_both_containers_of_a_model_pod_see_the_same_log_file(tmp_path: Path) -> None:
    built = model_pod(Owner("m", "ns", "uid"), _spec(), 0, agent_image="agent:1")
    vols = PodVolumes(built, root=tmp_path)
    vols.create()
    spec = built["spec"]
    agent = vols.view(spec["initContainers"][0]).args(spec["initContainers"][0]["args"])
    vllm_env = vols.view(spec["containers"][0]).env(
        {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    )
    config = agent[agent.index("--vllm-logging-config") + 1]
    log_file = agent[agent.index("--vllm-log-file") + 1]
    assert vllm_env[names.ENV_VLLM_LOGGING_CONFIG] == config
    assert Path(config).parent == Path(log_file).parent
    assert Path(config).parent.is_relative_to(tmp_path)


def _spec() -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "model": "m",
            "image": "vllm/vllm-openai:v0.34.0",
            "resources": {"gpuMemoryUtilization": 0.4},
        }
    )


def test_a_secret_volume_is_written_like_kubelets_atomic_writer_and_follows_updates(
    tmp_path: Path,
) -> None:
    import asyncio

    secret = {"secretName": "m-control-token", "items": [{"key": "token", "path": "token"}]}
    p = pod([{"name": "tok", "secret": secret}], [{"name": "tok", "mountPath": "/run/tok"}])
    values: dict[str, str | None] = {"token": None}
    reads: list[tuple[str, str, str]] = []

    async def read(namespace: str, name: str, key: str) -> str | None:
        reads.append((namespace, name, key))
        return values[key]

    vols = PodVolumes(p, root=tmp_path)
    vols.create()
    d = vols.directory("tok")
    assert d is not None
    view = vols.view(p["spec"]["containers"][0])
    path = Path(view.path("/run/tok/token"))
    asyncio.run(vols.sync_secrets(read))  # no Secret yet: nothing written
    assert not path.exists() and reads == [("ns", "m-control-token", "token")]
    values["token"] = "one"
    asyncio.run(vols.sync_secrets(read))
    assert path.read_text() == "one"
    assert path.is_symlink() and (d / "..data").is_symlink()
    first = (d / "..data").resolve()
    asyncio.run(vols.sync_secrets(read))  # unchanged: the same directory stays
    assert (d / "..data").resolve() == first
    values["token"] = "two"
    asyncio.run(vols.sync_secrets(read))
    assert path.read_text() == "two"
    assert (d / "..data").resolve() != first and not first.exists()  # swapped, old removed
    vols.remove()
