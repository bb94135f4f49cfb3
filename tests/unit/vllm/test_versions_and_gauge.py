from __future__ import annotations

import pytest

from vllm_sleep.vllm import Features, SleepGauge, VLLMVersion, parse_sleep_gauge


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.33.0", VLLMVersion(0, 33, 0)),
        ("0.10.2.dev123+gabcdef", VLLMVersion(0, 10, 2)),
        ("v0.11.0rc1", VLLMVersion(0, 11, 0)),
        ("1.2", VLLMVersion(1, 2, 0)),
        ("dev", None),
        ("", None),
    ],
)
def test_parse_version(text: str, expected: VLLMVersion | None) -> None:
    assert VLLMVersion.parse(text) == expected


def test_features_by_version() -> None:
    old, legacy, new = (Features(VLLMVersion.parse(v)) for v in ("0.8.5", "0.16.0", "0.33.0"))
    assert not old.http_reload_weights and legacy.http_reload_weights
    assert not legacy.sleep_mode_param and new.sleep_mode_param
    assert not old.sleep_resets_prefix_cache and legacy.sleep_resets_prefix_cache
    assert legacy.sleep_state_gauge and not old.sleep_state_gauge


@pytest.mark.parametrize(
    ("version", "kv_only", "v034", "default_util"),
    [
        ("0.16.0", False, False, 0.9),
        ("0.20.0", False, False, 0.92),
        ("0.31.0", True, False, 0.92),
        ("0.33.0", True, False, 0.92),
        ("0.34.0", True, True, 1.0),
        ("0.34.1rc1", True, True, 1.0),
    ],
)
def test_features_of_0_34_and_the_kv_only_tier(
    version: str, kv_only: bool, v034: bool, default_util: float
) -> None:
    f = Features(VLLMVersion.parse(version))
    assert f.release_kv_cache_memory is kv_only
    assert f.sleep_reset_connector is f.checkpoint_routes is f.extensible_kv_cache is v034
    assert f.backup_kept_while_awake is f.level2_discards_draft is v034
    assert f.default_gpu_memory_utilization == default_util


def test_unknown_version_gets_the_safe_answers() -> None:
    unknown = Features(None)
    assert not unknown.sleep_mode_param  # never send what old versions might mis-handle
    assert not unknown.sleep_resets_prefix_cache  # so the caller resets it: harmless
    assert unknown.http_reload_weights  # try; a 404 is loud
    assert unknown.backup_kept_while_awake  # never under-count host memory
    assert unknown.level2_discards_draft  # never lose a draft model unprotected
    assert not unknown.checkpoint_routes and not unknown.release_kv_cache_memory
    assert unknown.default_gpu_memory_utilization is None
    # No engine drain: it is a level-0 sleep, which ≤0.16 reads as "discard everything".
    assert not unknown.sleep_races_running_kernels


def _gauge(engine: str, **states: int) -> str:
    return "".join(
        f'vllm:engine_sleep_state{{engine="{engine}",model_name="a,b",sleep_state="{s}"}} {v}.0\n'
        for s, v in states.items()
    )


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"awake": 1, "weights_offloaded": 0, "discard_all": 0}, SleepGauge(True, None)),
        ({"awake": 0, "weights_offloaded": 1, "discard_all": 0}, SleepGauge(False, 1)),
        ({"awake": 0, "weights_offloaded": 0, "discard_all": 1}, SleepGauge(False, 2)),
        ({"awake": 0, "weights_offloaded": 0, "discard_all": 0}, SleepGauge(False, 0)),
    ],
)
def test_sleep_gauge_levels(states: dict[str, int], expected: SleepGauge) -> None:
    text = "# HELP x\n# TYPE vllm:engine_sleep_state gauge\n" + _gauge("0", **states)
    assert parse_sleep_gauge(text) == expected


def test_sleep_gauge_absent_or_garbage() -> None:
    assert parse_sleep_gauge('vllm:num_requests_running{engine="0"} 0.0\n') is None
    assert parse_sleep_gauge("vllm:engine_sleep_state{broken 1\n") is None
    assert parse_sleep_gauge("") is None


def test_sleep_gauge_data_parallel_takes_the_deepest_level() -> None:
    text = _gauge("0", awake=0, weights_offloaded=1, discard_all=0) + _gauge(
        "1", awake=0, weights_offloaded=0, discard_all=1
    )
    assert parse_sleep_gauge(text) == SleepGauge(False, 2)
    text = _gauge("0", awake=1, weights_offloaded=0, discard_all=0) + _gauge(
        "1", awake=0, weights_offloaded=0, discard_all=0
    )
    assert parse_sleep_gauge(text) == SleepGauge(False, 0)
