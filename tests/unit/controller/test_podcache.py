"""The operator's watch-fed pod cache keeps the newest version of each pod and honours deletes."""

from __future__ import annotations

from vllm_sleep.controller.podcache import PodCache


def pod(name: str, uid: str, rv: int, ns: str = "ns") -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": str(rv)}}


def test_newest_version_wins_and_late_old_versions_are_ignored() -> None:
    c = PodCache()
    c.observe("ADDED", pod("m-0", "u1", 5), "m")
    c.observe("MODIFIED", pod("m-0", "u1", 3), "m")
    assert c.get("ns", "m")[0]["metadata"]["resourceVersion"] == "5"


def test_delete_of_an_old_pod_keeps_its_successor() -> None:
    c = PodCache()
    c.observe("ADDED", pod("m-0", "new", 9), "m")
    c.observe("DELETED", pod("m-0", "old", 7), "m")
    assert [p["metadata"]["uid"] for p in c.get("ns", "m")] == ["new"]
    c.observe("DELETED", pod("m-0", "new", 10), "m")
    assert c.get("ns", "m") == []


def test_replace_seeds_and_models_are_separate() -> None:
    c = PodCache()
    c.replace("ns", "a", [pod("a-1", "x", 1), pod("a-0", "y", 1)])
    c.observe("ADDED", pod("b-0", "z", 1), "b")
    assert [p["metadata"]["name"] for p in c.get("ns", "a")] == ["a-0", "a-1"]
    c.forget("ns", "a")
    assert c.get("ns", "a") == [] and len(c.get("ns", "b")) == 1


def labelled(name: str, model: str, ns: str = "ns") -> dict:  # type: ignore[type-arg]
    p = pod(name, f"uid-{name}", 1, ns)
    p["metadata"]["labels"] = {"vllm-sleep.io/model": model}
    return p


async def test_one_list_per_namespace_seeds_every_model_and_is_shared() -> None:
    import asyncio

    c = PodCache()
    c.observe("ADDED", labelled("gone-0", "gone"), "gone")  # deleted while unwatched
    lists: list[str] = []

    async def lister() -> list[dict]:  # type: ignore[type-arg]
        lists.append("ns")
        await asyncio.sleep(0)
        return [labelled("a-0", "a"), labelled("b-0", "b"), labelled("b-1", "b")]

    # A thousand models starting at once: one LIST between them.
    await asyncio.gather(*(c.refresh("ns", lister, 60.0, now=100.0) for _ in range(50)))
    assert lists == ["ns"]
    assert [p["metadata"]["name"] for p in c.get("ns", "b")] == ["b-0", "b-1"]
    assert len(c.get("ns", "a")) == 1 and c.get("ns", "gone") == []
    await c.refresh("ns", lister, 60.0, now=150.0)  # fresh enough: the watch keeps it
    assert lists == ["ns"]
    await c.refresh("ns", lister, 60.0, now=161.0)  # healed now and then, in the background
    for _ in range(3):
        await asyncio.sleep(0)
    assert lists == ["ns", "ns"]
    await c.refresh("other", lister, 60.0, now=161.0)  # namespaces list separately
    assert len(lists) == 3


async def test_a_heal_never_holds_up_a_pass() -> None:
    import asyncio

    c = PodCache()
    release = asyncio.Event()
    calls: list[int] = []

    async def slow() -> list[dict]:  # type: ignore[type-arg]
        calls.append(1)
        if len(calls) > 1:
            await release.wait()  # a LIST of a big namespace on a busy apiserver
        return [labelled("a-0", "a")]

    await c.refresh("ns", slow, 60.0, now=0.0)  # the seed: awaited
    await asyncio.wait_for(c.refresh("ns", slow, 60.0, now=100.0), 1.0)  # the heal: not
    await asyncio.sleep(0)
    assert calls == [1, 1] and len(c.get("ns", "a")) == 1
    release.set()


def test_what_the_watch_saw_during_a_list_wins_over_the_lists_snapshot() -> None:
    c = PodCache()
    c.observe("ADDED", labelled("a-0", "a"), "a")
    c.observe("ADDED", labelled("gone-0", "gone"), "gone")  # its delete was missed
    sent = 2  # the LIST goes out after those two events
    newer = labelled("a-0", "a")
    newer["metadata"]["resourceVersion"] = "9"
    c.observe("MODIFIED", newer, "a")
    c.observe("ADDED", labelled("b-0", "b"), "b")  # created after the LIST's snapshot
    deleted = labelled("c-0", "c")
    c.observe("DELETED", deleted, "c")  # deleted after the snapshot
    snapshot = [labelled("a-0", "a"), labelled("c-0", "c")]  # no gone-0: deleted unseen
    c.merge("ns", snapshot, sent)
    assert c.get("ns", "a")[0]["metadata"]["resourceVersion"] == "9"
    assert len(c.get("ns", "b")) == 1
    assert c.get("ns", "c") == [] and c.get("ns", "gone") == []


def test_cached_pods_are_slim_and_observed_the_same() -> None:
    from vllm_sleep.controller.podcache import slim
    from vllm_sleep.reconcile.observe import observe_pod

    whole = labelled("m-0", "m")
    whole["metadata"]["labels"]["vllm-sleep.io/replica"] = "0"
    whole["metadata"]["annotations"] = {"vllm-sleep.io/woken-at": "12.5", "x": "y"}
    whole["metadata"]["managedFields"] = [{"manager": "kubelet", "fieldsV1": {}}] * 20
    whole["spec"] = {"nodeName": "gpu-node-1", "containers": [{"name": "vllm", "env": []}]}
    whole["status"] = {
        "phase": "Running",
        "podIP": "127.0.0.9",
        "conditions": [{"type": "vllm-sleep.io/awake", "status": "True"}],
        "containerStatuses": [
            {
                "name": "vllm",
                "restartCount": 2,
                "ready": False,
                "lastState": {"terminated": {"exitCode": 1, "message": "CUDA OOM"}},
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            }
        ],
    }
    c = PodCache()
    c.observe("ADDED", whole, "m")
    cached = c.get("ns", "m")[0]
    assert "managedFields" not in cached["metadata"] and "containers" not in cached["spec"]
    assert observe_pod(cached) == observe_pod(whole)
    assert observe_pod(slim(whole)).failure is not None  # the crash is still seen


def test_a_cached_pods_status_keeps_only_what_a_pass_reads() -> None:
    from vllm_sleep.controller.podcache import slim
    from vllm_sleep.reconcile.observe import observe_pod

    container = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.34.0",
        "imageID": "sha256:abc",
        "containerID": "containerd://0123",
        "started": True,
        "ready": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": "2026-12-07T10:00:00Z"}},
        "lastState": {},
        "volumeMounts": [{"name": "v", "mountPath": "/v"}] * 5,
    }
    whole = labelled("m-0", "m")
    whole["status"] = {
        "phase": "Running",
        "podIP": "127.0.0.9",
        "podIPs": [{"ip": "127.0.0.9"}],
        "hostIP": "10.0.0.1",
        "hostIPs": [{"ip": "10.0.0.1"}],
        "startTime": "2026-12-07T10:00:00Z",
        "qosClass": "Burstable",
        "conditions": [{"type": "PodScheduled", "status": "False", "message": "0/3 nodes"}],
        "containerStatuses": [container],
        "initContainerStatuses": [{**container, "name": "agent"}],
    }
    cut = slim(whole)["status"]
    assert set(cut) == {"phase", "podIP", "conditions", "containerStatuses"}
    assert set(cut["containerStatuses"][0]) == {
        "name",
        "ready",
        "restartCount",
        "state",
        "lastState",
    }
    assert observe_pod(slim(whole)) == observe_pod(whole)
    assert "image" in whole["status"]["containerStatuses"][0]  # the watch's dict is untouched
