"""`vllm-sleep operator`'s leader election flags: defaults, refused timings, identity, namespace."""

from __future__ import annotations

import re

import pytest

from vllm_sleep.api.leader import LEADER_LEASE_NAME, Timings
from vllm_sleep.controller import main


def test_leader_election_is_off_unless_asked_and_defaults_to_client_gos_timings() -> None:
    args = main.parser().parse_args([])
    assert args.leader_elect is False
    assert args.leader_lease_name == LEADER_LEASE_NAME
    t = Timings()
    assert (args.leader_lease_duration, args.leader_renew_deadline, args.leader_retry_period) == (
        t.lease_duration,
        t.renew_deadline,
        t.retry_period,
    )
    assert main.parser().parse_args(["--leader-elect"]).leader_elect is True


def test_unsafe_timings_are_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        main.main(["--leader-elect", "--leader-lease-duration=10", "--leader-renew-deadline=10"])
    assert e.value.code == 2
    assert "must exceed the renew deadline" in capsys.readouterr().err


def test_identity_is_the_pod_name_and_a_random_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "vllm-sleep-operator-7d9f-abcde")
    one, two = main._identity(), main._identity()
    assert re.fullmatch(r"vllm-sleep-operator-7d9f-abcde_[0-9a-f]{8}", one)
    assert one != two  # a restarted process is a new candidate


def test_the_lease_lives_in_the_pods_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "platform")
    assert main._own_namespace() == "platform"
    monkeypatch.delenv("POD_NAMESPACE")
    monkeypatch.setattr(main, "SERVICE_ACCOUNT_NAMESPACE", main.Path("/nonexistent/namespace"))
    assert main._own_namespace() == main.DEFAULT_LEASE_NAMESPACE


def test_the_node_loss_bound_is_a_flag_and_must_be_positive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from vllm_sleep.reconcile.node_loss import NODE_LOST_SECONDS

    assert main.parser().parse_args([]).node_lost_seconds == NODE_LOST_SECONDS
    assert main.parser().parse_args(["--node-lost-seconds=120"]).node_lost_seconds == 120.0
    with pytest.raises(SystemExit) as e:
        main.main(["--node-lost-seconds=0"])
    assert e.value.code == 2
    assert "--node-lost-seconds must be positive" in capsys.readouterr().err
