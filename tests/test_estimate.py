"""Unit tests of flux_delegate.estimate: a target's plan and a job's
estimated start on it, under each queue policy."""

import pytest

from flux_delegate.estimate import (
    INF,
    MAX_PLANNED,
    Plan,
    Request,
    build_plan,
    idset,
    nodes_of,
    queue_policy,
    request_of_jobspec,
)

NOW = 1000.0


def R(*entries):
    """R with R_lite entries (ranks, cores[, gpus])."""
    lite = []
    for entry in entries:
        children = {"core": entry[1]}
        if len(entry) > 2:
            children["gpu"] = entry[2]
        lite.append({"rank": entry[0], "children": children})
    return {"version": 1, "execution": {"R_lite": lite}}


def running(ranks, ncores, expiration):
    return {"state": 16, "ranks": ranks, "ncores": ncores, "expiration": expiration}


def pending(ncores, duration, priority=16, t_submit=1.0, nnodes=1, **extra):
    job = {"state": 8, "ncores": ncores, "nnodes": nnodes, "duration": duration}
    job.update(priority=priority, t_submit=t_submit, **extra)
    return job


def estimate(plan, cores, duration, nnodes=1):
    return plan.estimate(Request(cores, nnodes=nnodes, duration=duration))[0]


def test_idle_target_starts_now():
    plan = build_plan({"all": R(("0", "0-7"))}, [], "fcfs", NOW)
    e = estimate(plan, 4, 60)
    assert e.seconds == 0 and e.idle == 4


def test_running_job_holds_cores_until_its_expiration():
    plan = build_plan({"all": R(("0", "0-7"))}, [running("0", 6, NOW + 100)], "fcfs", NOW)
    assert estimate(plan, 2, 60).seconds == 0
    assert estimate(plan, 4, 60).seconds == 100


def test_a_running_job_without_a_limit_holds_for_ever():
    plan = build_plan({"all": R(("0", "0-7"))}, [running("0", 8, 0)], "fcfs", NOW)
    assert estimate(plan, 1, 60).seconds is None


def test_fcfs_never_starts_a_job_before_one_ahead_of_it():
    jobs = [running("0", 8, NOW + 100), pending(8, 50)]
    # The pending 8-core job starts at 100; a 1-core 10s job could fit
    # nowhere before, and under fcfs not before 100 either.
    fcfs = build_plan({"all": R(("0", "0-7"))}, jobs, "fcfs", NOW)
    assert estimate(fcfs, 1, 10).seconds == 150
    # With one core free now, backfilling takes it at once; fcfs waits.
    jobs = [running("0", 7, NOW + 100), pending(8, 50)]
    assert estimate(build_plan({"all": R(("0", "0-7"))}, jobs, "fcfs", NOW), 1, 10).seconds == 150
    easy = build_plan({"all": R(("0", "0-7"))}, jobs, "easy", NOW)
    assert estimate(easy, 1, 10).seconds == 0
    # ... but not a job that would delay the reserved one.
    assert estimate(easy, 1, 200).seconds == 150


def test_pending_jobs_are_planned_in_priority_order():
    jobs = [pending(8, 100, priority=1, t_submit=1), pending(8, 30, priority=9, t_submit=2)]
    plan = build_plan({"all": R(("0", "0-7"))}, jobs, "conservative", NOW)
    # The high priority job runs 0..30, the other 30..130.
    assert estimate(plan, 8, 10).seconds == 130
    assert plan.planned == 2


def test_fluxion_t_estimate_is_honoured():
    jobs = [pending(8, 10, annotations={"sched": {"t_estimate": NOW + 500}})]
    plan = build_plan({"all": R(("0", "0-7"))}, jobs, "conservative", NOW)
    assert estimate(plan, 8, 100).seconds == 0  # the hole before it
    assert estimate(plan, 8, 600).seconds == 510
    assert "sched.t_estimate" in plan.basis()


def test_multi_node_request_needs_its_nodes_at_once():
    status = {"all": R(("0-2", "0-3"))}
    jobs = [running("0", 4, NOW + 10), running("1", 4, NOW + 20)]
    plan = build_plan(status, jobs, "fcfs", NOW)
    assert estimate(plan, 4, 5, nnodes=1).seconds == 0
    assert estimate(plan, 4, 5, nnodes=2).seconds == 10
    assert estimate(plan, 4, 5, nnodes=3).seconds == 20
    assert estimate(plan, 4, 5, nnodes=4).seconds is None


def test_best_fit_counts_the_idle_cores_left():
    status = {"all": R(("0", "0-7"), ("1", "0-15"))}
    plan = build_plan(status, [], "fcfs", NOW)
    e = estimate(plan, 6, 10)
    assert e.idle == 2  # on the 8-core node, not the 16-core one


def test_down_ranks_are_not_planned():
    status = {"all": R(("0-1", "0-7")), "down": R(("1", "0-7"))}
    assert [n[0] for n in nodes_of(status)] == [0]


def test_reserved_jobs_are_counted_in_at_once():
    plan = build_plan({"all": R(("0", "0-7"))}, [], "fcfs", NOW)
    request = Request(8, nnodes=1, duration=60)
    e, (start, shares) = plan.estimate(request)
    assert e.seconds == 0
    plan.reserve(request, start, shares)
    assert estimate(plan, 8, 60).seconds == 60


def test_extra_pending_jobs_go_last():
    plan = build_plan(
        {"all": R(("0", "0-7"))}, [], "fcfs", NOW, extra_pending=[(Request(8, nnodes=1, duration=30), None)]
    )
    assert estimate(plan, 1, 10).seconds == 30


def test_a_deep_queue_is_a_lower_bound_that_says_so():
    jobs = [pending(1, 10, t_submit=i) for i in range(MAX_PLANNED + 5)]
    plan = build_plan({"all": R(("0", "0-7"))}, jobs, "fcfs", NOW)
    assert plan.unplanned == 5 and "lower bound" in plan.basis()


def test_gpus_are_planned():
    status = {"all": R(("0", "0-7", "0-1"))}
    plan = build_plan(status, [], "fcfs", NOW)
    assert plan.estimate(Request(1, gpus=2, nnodes=1, duration=5))[0].seconds == 0
    assert plan.estimate(Request(1, gpus=3, nnodes=1, duration=5))[0].seconds is None


def test_request_of_jobspec():
    spec = {
        "resources": [
            {
                "type": "node",
                "count": 2,
                "with": [{"type": "slot", "count": 3, "with": [{"type": "core", "count": 2}]}],
            }
        ],
        "attributes": {"system": {"duration": 90}},
    }
    r = request_of_jobspec(spec)
    assert (r.nnodes, r.cores, r.gpus, r.duration) == (2, 6, 0, 90)
    spec = {"resources": [{"type": "slot", "count": 4, "with": [{"type": "core", "count": 1}]}]}
    r = request_of_jobspec(spec)
    assert (r.nnodes, r.cores, r.duration) == (None, 4, INF)


@pytest.mark.parametrize(
    "spec",
    [
        {"resources": "no"},
        {"resources": [{"type": "core", "count": -1}]},
        {"resources": [{"type": "core", "count": "1"}]},
        {"resources": [], "attributes": {"system": {"duration": "1h"}}},
    ],
)
def test_bad_jobspec_is_a_value_error(spec):
    with pytest.raises(ValueError):
        request_of_jobspec(spec)


@pytest.mark.parametrize(
    "status",
    [{}, {"all": None}, {"all": {"execution": {"R_lite": [{"rank": "x"}]}}}],
)
def test_bad_resource_status_is_an_error(status):
    with pytest.raises((ValueError, KeyError, TypeError)):
        build_plan(status, [], "fcfs", NOW)


def test_queue_policy_from_fluxion_params():
    assert queue_policy({"params": {"queue-policy": "easy"}}) == "easy"
    assert queue_policy({"params": {}}) == "fcfs"
    assert queue_policy({"params": {"queue-policy": "fcfs", "batch": {"queue-policy": "conservative"}}}, "batch") == "conservative"
    assert queue_policy(None) == "fcfs"


def test_idset():
    assert idset("0-2,5") == [0, 1, 2, 5]
    assert idset("") == []
    with pytest.raises(ValueError):
        idset("3-1")


def test_pooled_plan_of_a_huge_target():
    nodes = [(r, 4, 0) for r in range(2000)]
    plan = Plan(nodes, NOW)
    assert plan.pooled
    assert plan.estimate(Request(8000, nnodes=None, duration=5))[0].seconds == 0


def test_a_pending_jobs_own_start_is_kept_by_its_id():
    """start_of: where the plan put a pending job among the others (what
    a move compares with a start elsewhere)."""
    jobs = [
        running("0", 8, NOW + 100),
        pending(8, 50, t_submit=1.0, id=11),
        pending(4, 50, t_submit=2.0, id=12),
    ]
    extra = [(Request(8, nnodes=1, duration=10), 13)]
    plan = build_plan({"all": R(("0", "0-7"))}, jobs, "fcfs", NOW, extra_pending=extra)
    assert plan.start_of(11).seconds == 100
    assert plan.start_of(12).seconds == 150
    assert plan.start_of(13).seconds == 200
    assert plan.start_of(99) is None


def test_move_settings():
    from flux_delegate.policies import move_settings_of

    default = move_settings_of({})
    assert (default.margin, default.most, default.interval, default.on) == (60.0, 1, 30.0, True)
    off = move_settings_of({"delegate-policy": {"move-margin": 0}})
    assert not off.on
    assert not move_settings_of({"delegate-policy": {"move-max": 0}}).on
    for bad in ({"move-max": True}, {"move-max": 1.5}, {"move-margin": -1}, {"move-interval": "x"}):
        with pytest.raises(ValueError, match=r"\[delegate-policy\]: move-"):
            move_settings_of({"delegate-policy": bad})
