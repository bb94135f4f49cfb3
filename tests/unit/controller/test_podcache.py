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
