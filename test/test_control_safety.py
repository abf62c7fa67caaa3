"""Commander safety filter (avdp_ros.control.safety): the limits hold for any input sequence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from avdp_ros.control.safety import INTERVENTIONS, SafetyFilter, SafetyLimits
from avdp_ros.geometry import axis_angle_to_quat, quat_angle, quat_conj, quat_mul, quat_to_axis_angle

LIM = SafetyLimits()
LO, HI = np.array(LIM.workspace_min), np.array(LIM.workspace_max)
DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # TCP pointing down
HOME = np.array([0.45, 0.0, 0.30, *DOWN])
RATE = 0.01  # 100 Hz commander


def started(pose=HOME, width=0.04, t0=0.0) -> SafetyFilter:
    f = SafetyFilter(LIM)
    f.reset(pose, width, now=t0)
    return f


def pose_at(xyz, q=DOWN) -> np.ndarray:
    return np.concatenate([np.asarray(xyz, dtype=np.float64), q])


def run(f: SafetyFilter, desired, steps: int, t0: float = 0.0, dt: float = RATE):
    """Step the filter `steps` times with the same desired target; returns the commands (N, 7)."""
    out = []
    for k in range(1, steps + 1):
        out.append(f.step(desired, t0 + k * dt)[0])
    return np.array(out)


def angular_velocity(q_prev: np.ndarray, q: np.ndarray, dt: float) -> np.ndarray:
    return quat_to_axis_angle(quat_mul(q, quat_conj(q_prev))) / dt


# ---- limits ----


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"workspace_min": (0.8, -0.35, 0.0)}, "workspace_min"),
        ({"workspace_max": (0.75, 0.35)}, "workspace_max"),
        ({"workspace_max": (0.75, 0.35, float("nan"))}, "workspace_max"),
        ({"max_linear_speed": 0.0}, "max_linear_speed"),
        ({"max_angular_accel": float("inf")}, "max_angular_accel"),
        ({"max_linear_accel": -1.0}, "max_linear_accel"),
        ({"gripper_min": 0.09}, "gripper range"),
        ({"frame_id": ""}, "frame_id"),
        ({"max_angular_speed": 20.0}, "half a turn per step"),
    ],
)
def test_limits_reject_bad_values_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SafetyLimits(**kwargs)


def test_defaults_match_the_sim():
    pytest.importorskip("mujoco", reason="the sim (avdp_ros.sim.env) needs mujoco")
    from avdp_ros.sim.env import BASE_FRAME, SimConfig

    assert LIM.frame_id == BASE_FRAME
    sim = SimConfig()
    assert np.all(LO >= np.array(sim.workspace_min)) and np.all(HI <= np.array(sim.workspace_max))


# ---- reset ----


def test_step_before_reset_is_a_programming_error():
    with pytest.raises(RuntimeError, match="reset"):
        SafetyFilter().step((HOME, 0.04), 0.0)


@pytest.mark.parametrize(
    "pose, message",
    [
        (pose_at([1.0, 0.0, 0.3]), "outside the workspace box"),
        (pose_at([0.45, 0.0, 0.3], q=np.zeros(4)), "quaternion norm"),
        (pose_at([np.nan, 0.0, 0.3]), "non-finite"),
    ],
)
def test_reset_refuses_a_bad_measured_pose(pose, message):
    with pytest.raises(ValueError, match=message):
        SafetyFilter().reset(pose, 0.04, now=0.0)


def test_first_command_is_the_measured_pose():
    f = started()
    pose, width = f.command()
    np.testing.assert_allclose(pose, HOME)
    assert width == 0.04
    # Without a reset time the first step only anchors the clock and still sends that pose.
    g = SafetyFilter(LIM)
    g.reset(HOME, 0.04)
    np.testing.assert_allclose(g.step((pose_at([0.6, 0.2, 0.1]), 0.0), 5.0)[0], HOME)


# ---- tracking ----


def test_a_trajectory_within_the_limits_is_tracked_closely():
    f = started()
    t = np.arange(1, 201) * RATE  # ends at x = 0.65, clear of the wall at 0.75
    xs = 0.45 + 0.1 * t  # 0.1 m/s along x, within the 0.25 m/s limit
    cmds = np.array([f.step((pose_at([x, 0.0, 0.3]), 0.04), ti)[0] for x, ti in zip(xs, t)])
    assert np.all(np.abs(cmds[100:, 0] - xs[100:]) < 1e-9)  # after the start-up lag: exact
    assert f.interventions["speed"] == 0


def test_a_far_target_is_reached_without_overshoot():
    f = started()
    cmds = run(f, (pose_at([0.55, 0.05, 0.25]), 0.04), 200)
    assert np.all(cmds[:, 0] <= 0.55 + 1e-12)
    np.testing.assert_allclose(cmds[-1, :3], [0.55, 0.05, 0.25], atol=1e-9)
    steps = np.linalg.norm(np.diff(cmds[:, :3], axis=0), axis=1)
    assert steps.max() == pytest.approx(LIM.max_linear_speed * RATE)  # cruising at the limit
    assert f.interventions["speed"] > 0


def test_a_large_rotation_is_rate_limited_and_completed():
    f = started()
    goal = quat_mul(axis_angle_to_quat(np.array([0.0, 0.0, 3.0])), DOWN)
    cmds = run(f, (pose_at(HOME[:3], goal), 0.04), 400)
    angles = [quat_angle(a, b) for a, b in zip(cmds[:-1, 3:], cmds[1:, 3:])]
    assert max(angles) <= LIM.max_angular_speed * RATE + 1e-9
    assert max(angles) == pytest.approx(LIM.max_angular_speed * RATE)
    assert quat_angle(cmds[-1, 3:], goal) < 1e-6


def test_target_outside_the_box_stops_at_the_wall():
    f = started(pose_at([0.70, 0.0, 0.3]))
    cmds = run(f, (pose_at([5.0, 0.0, -1.0]), 0.04), 400)
    assert np.all(cmds[:, :3] <= HI + 1e-12) and np.all(cmds[:, :3] >= LO - 1e-12)
    np.testing.assert_allclose(cmds[-1, :3], [HI[0], 0.0, LO[2]], atol=1e-6)
    assert f.interventions["workspace"] > 0


def test_moving_fast_towards_a_wall_brakes_within_the_acceleration_limit():
    # Cruise at full speed along +x towards a target just past the wall: the box must brake us.
    f = started(pose_at([0.30, 0.0, 0.3]))
    cmds = run(f, (pose_at([0.76, 0.0, 0.3]), 0.04), 600, dt=0.004)
    v = np.diff(np.vstack([pose_at([0.30, 0.0, 0.3]), cmds])[:, 0]) / 0.004
    assert v.max() == pytest.approx(LIM.max_linear_speed)
    assert np.all(np.abs(np.diff(v)) <= LIM.max_linear_accel * 0.004 + 1e-9)
    assert cmds[:, 0].max() <= HI[0] + 1e-12
    assert cmds[-1, 0] == pytest.approx(HI[0], abs=1e-6)


def test_gripper_width_is_clamped_into_its_range():
    f = started()
    assert f.step((HOME, 0.5), RATE)[1] == LIM.gripper_max
    assert f.step((HOME, -1.0), 2 * RATE)[1] == LIM.gripper_min
    assert f.interventions["gripper"] == 2


# ---- holding ----


def test_stale_plan_holds_and_restarts_from_rest():
    f = started()
    run(f, (pose_at([0.6, 0.0, 0.3]), 0.04), 50)  # now moving at speed
    held, _ = f.command()
    for k in range(51, 61):
        cmd, _ = f.step(None, k * RATE)
        np.testing.assert_array_equal(cmd, held)
        assert f.holding
    assert f.interventions["stale"] == 10 and "stale" in f.last_reason
    cmd, _ = f.step((pose_at([0.6, 0.0, 0.3]), 0.04), 61 * RATE)
    assert np.linalg.norm(cmd[:3] - held[:3]) / RATE <= LIM.max_linear_accel * RATE + 1e-12  # from rest


@pytest.mark.parametrize(
    "desired, kind",
    [
        ((pose_at([np.nan, 0.0, 0.3]), 0.04), "invalid"),
        ((pose_at([0.5, 0.0, np.inf]), 0.04), "invalid"),
        ((pose_at([0.5, 0.0, 0.3], q=np.zeros(4)), 0.04), "invalid"),
        ((pose_at([0.5, 0.0, 0.3], q=np.array([0.0, 0.0, 0.0, 1e300])), 0.04), "invalid"),
        ((HOME, float("nan")), "invalid"),
        ((HOME[:6], 0.04), "invalid"),
        ("garbage", "invalid"),
        ((HOME,), "invalid"),
        ((HOME, [1e400]), "invalid"),
    ],
)
def test_invalid_desired_holds_and_is_counted(desired, kind):
    f = started()
    cmd, width = f.step(desired, RATE)
    np.testing.assert_array_equal(cmd, HOME)
    assert width == 0.04 and f.holding
    assert f.interventions[kind] == 1 and f.last_reason


def test_wrong_frame_holds():
    f = started()
    cmd, _ = f.step((pose_at([0.6, 0.0, 0.3]), 0.04), RATE, frame_id="world")
    np.testing.assert_array_equal(cmd, HOME)
    assert f.interventions["frame"] == 1 and "'world'" in f.last_reason
    cmd, _ = f.step((pose_at([0.6, 0.0, 0.3]), 0.04), 2 * RATE, frame_id=LIM.frame_id)
    assert cmd[0] > HOME[0]


@pytest.mark.parametrize("t", [0.0, -3.0, 0.5, float("nan"), float("inf")])
def test_clock_faults_hold(t):
    f = started(t0=0.0)
    cmd, _ = f.step((pose_at([0.6, 0.0, 0.3]), 0.04), t)  # repeated, backwards, too long a gap, NaN
    np.testing.assert_array_equal(cmd, HOME)
    assert f.interventions["clock"] == 1


def test_clock_that_jumped_backwards_resumes_from_the_new_time():
    f = started(t0=100.0)
    f.step((pose_at([0.6, 0.0, 0.3]), 0.04), 3.0)
    cmd, _ = f.step((pose_at([0.6, 0.0, 0.3]), 0.04), 3.0 + RATE)
    assert not f.holding and cmd[0] > HOME[0]


def test_estop_latches_until_reset_estop():
    f = started()
    run(f, (pose_at([0.6, 0.0, 0.3]), 0.04), 20)
    f.estop("operator button")
    held, _ = f.command()
    assert f.estopped
    f.reset(HOME, 0.04, now=1.0)  # re-initialising from the measured pose does not clear it
    held, _ = f.command()
    for k in range(1, 50):
        cmd, _ = f.step((pose_at([0.6, 0.1, 0.2]), 0.04), 1.0 + k * RATE)
        np.testing.assert_array_equal(cmd, held)
    assert f.interventions["estop"] == 49 and "operator button" in f.last_reason
    f.reset_estop()
    cmd, _ = f.step((pose_at([0.6, 0.1, 0.2]), 0.04), 1.5)
    assert not f.estopped and not f.holding and not np.array_equal(cmd, held)


def test_intervention_counters_have_stable_keys():
    assert set(started().interventions) == set(INTERVENTIONS)
    assert all(v == 0 for v in started().interventions.values())


# ---- properties over arbitrary input sequences ----

WEIRD = [math.nan, math.inf, -math.inf, 1e300, -1e300, 1e6, -1e6]


def _unit(q: tuple[float, float, float, float]) -> np.ndarray:
    q = np.array(q)
    return q / np.linalg.norm(q)


# Usable targets, often outside the box (clamping, wall braking) and far apart (speed limits).
unit_quat = st.tuples(*[st.floats(-1.0, 1.0)] * 4).filter(lambda q: np.linalg.norm(q) > 1e-3).map(_unit)
good_pose = st.builds(lambda p, q: np.array([*p, *q]), st.tuples(*[st.floats(-0.2, 1.2)] * 3), unit_quat)
good = st.tuples(good_pose, st.floats(-0.1, 0.2))
# Anything else a broken model or node could send.
coord = st.one_of(st.floats(-0.5, 1.5), st.sampled_from(WEIRD))
any_quat = st.one_of(
    st.tuples(*[st.floats(-1.0, 1.0)] * 4),  # any norm 0..2: unit-ish, non-unit, zero
    st.sampled_from([(0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, math.nan), (1e300, 0.0, 0.0, 1.0)]),
)
bad_pose = st.builds(lambda p, q: np.array([*p, *q]), st.tuples(coord, coord, coord), any_quat)
bad = st.one_of(
    st.tuples(bad_pose, st.one_of(st.floats(-0.1, 0.2), st.sampled_from(WEIRD))),
    st.none(),
    st.sampled_from(["garbage", (np.zeros(5), 0.0), (HOME, "wide"), (HOME,)]),
)
desired = st.one_of(good, good, good, bad)
ok_dt = st.floats(1e-3, 0.02)
dt = st.one_of(ok_dt, ok_dt, ok_dt, ok_dt, st.floats(1e-3, 0.25), st.sampled_from([0.0, -0.01, -10.0]))
step = st.tuples(st.just("step"), desired, dt, st.integers(1, 40))  # the same target for n steps
event = st.one_of(step, step, step, step, step, step, step, step,
                  st.just(("estop", None, None, 1)), st.just(("reset_estop", None, None, 1)))


def valid(d) -> bool:
    """Whether `d` is a usable target (independently of the filter's own check)."""
    if not (isinstance(d, tuple) and len(d) == 2 and isinstance(d[0], np.ndarray) and isinstance(d[1], float)):
        return False
    p, w = d
    with np.errstate(over="ignore"):
        n = np.linalg.norm(p[3:])
    return p.shape == (7,) and bool(np.all(np.isfinite(p))) and math.isfinite(w) and 0.5 < n < 1.5


def assert_safe_run(start: tuple[float, float, float], events) -> int:
    """Feed `events` to a filter started at `start`; check every command. Returns the moving steps."""
    f = SafetyFilter(LIM)
    f.reset(pose_at(start), 0.04, now=0.0)
    t, prev, prev_w = 0.0, f.command()[0], 0.04
    v_prev, w_prev = np.zeros(3), np.zeros(3)  # velocities of the previous command step
    tol, moving = 1e-9, 0
    for kind, d, step_dt, repeats in events:
        if kind == "estop":
            f.estop("test")
            continue
        if kind == "reset_estop":
            f.reset_estop()
            continue
        for _ in range(repeats):
            t_before, t = t, t + step_dt
            real_dt = t - t_before  # what the filter sees: 0.4 + 0.2 - 0.4 is 0.20000000000000007
            cmd, width = f.step(d, t)
            # Always: finite, unit quaternion, inside the box, gripper in range.
            assert np.all(np.isfinite(cmd)) and math.isfinite(width)
            assert abs(np.linalg.norm(cmd[3:]) - 1.0) < 1e-9
            assert np.all(cmd[:3] >= LO - 1e-12) and np.all(cmd[:3] <= HI + 1e-12)
            assert LIM.gripper_min <= width <= LIM.gripper_max
            must_hold = f.estopped or not 0.0 < real_dt <= LIM.max_dt or not valid(d)
            assert f.holding == must_hold
            if must_hold:  # holds re-send the last command exactly and restart from rest
                np.testing.assert_array_equal(cmd, prev)
                assert width == prev_w
                v_prev, w_prev = np.zeros(3), np.zeros(3)
            else:
                moving += 1
                v = (cmd[:3] - prev[:3]) / real_dt
                w = angular_velocity(prev[3:], cmd[3:], real_dt)
                assert np.linalg.norm(v) <= LIM.max_linear_speed + tol
                assert np.linalg.norm(v - v_prev) <= LIM.max_linear_accel * real_dt + tol
                assert quat_angle(prev[3:], cmd[3:]) <= LIM.max_angular_speed * real_dt + tol
                assert np.linalg.norm(w) <= LIM.max_angular_speed + tol
                assert np.linalg.norm(w - w_prev) <= LIM.max_angular_accel * real_dt + tol
                v_prev, w_prev = v, w
            prev, prev_w = cmd, width
    return moving


in_box = st.tuples(st.floats(0.25, 0.75), st.floats(-0.35, 0.35), st.floats(0.015, 0.5))


@settings(max_examples=200, deadline=None)
@given(start=in_box, events=st.lists(event, max_size=12))
# found in CI-like runs: steps of exactly max_dt, whose float sums drift just past it
@example(start=(0.5, 0.0, 0.5), events=[("step", (np.array([0.0, 0, 0, 0, 0, 0, 1]), 0.0), 0.2, 3)])
def test_commands_always_respect_the_limits(start, events):
    assert_safe_run(start, events)


def ramp_steps(pose0: np.ndarray, v: tuple, w: tuple, step_dt: float, n: int) -> list:
    """Per-step events for a target moving at constant linear velocity v and angular velocity w."""
    steps = []
    for k in range(1, n + 1):
        q = quat_mul(axis_angle_to_quat(np.array(w) * k * step_dt), pose0[3:])
        steps.append(("step", (np.concatenate([pose0[:3] + np.array(v) * k * step_dt, q]), 0.04), step_dt, 1))
    return steps


hold_on = st.tuples(st.just("step"), good, ok_dt, st.integers(5, 40))
ramp = st.builds(ramp_steps, good_pose, st.tuples(*[st.floats(-0.3, 0.3)] * 3),
                 st.tuples(*[st.floats(-1.5, 1.5)] * 3), ok_dt, st.integers(5, 60))


@settings(max_examples=100, deadline=None)
@given(start=in_box, segments=st.lists(st.one_of(hold_on.map(lambda e: [e]), ramp), max_size=6))
def test_long_valid_motions_respect_the_limits(start, segments):
    """Only usable targets, still or moving (up to 0.52 m/s, beyond the limit): long runs at speed
    into walls and corners, with turns and reversals."""
    events = [e for segment in segments for e in segment]
    moving = assert_safe_run(start, events)
    assert moving == sum(e[3] for e in events)  # nothing here may hold


def test_a_target_running_through_a_corner_is_braked_in_time():
    # The target keeps going through the corner at nearly the speed limit; the command must brake
    # for all three walls at once without exceeding the acceleration limit.
    events = ramp_steps(HOME, (0.14, 0.14, 0.14), (0.0, 0.0, 0.0), RATE, 400)
    assert assert_safe_run(tuple(HOME[:3]), events) == 400
    f = started()
    for k, (_, d, _, _) in enumerate(events, start=1):
        f.step(d, k * RATE)
    np.testing.assert_allclose(f.command()[0][:3], [HI[0], HI[1], HI[2]], atol=1e-6)


def test_turning_along_a_wall_at_speed_stays_within_the_limits():
    # Full speed towards the +x wall, then the target jumps sideways along the wall.
    events = [("step", (pose_at([0.80, 0.0, 0.3]), 0.04), RATE, 78),
              ("step", (pose_at([0.80, -0.35, 0.3]), 0.04), RATE, 200)]
    assert assert_safe_run((0.55, 0.0, 0.3), events) == 278


@settings(max_examples=100, deadline=None)
@given(events=st.lists(st.tuples(desired, dt), min_size=1, max_size=60))
def test_estop_stays_latched_whatever_comes_in(events):
    f = SafetyFilter(LIM)
    f.reset(HOME, 0.04, now=0.0)
    run(f, (pose_at([0.6, 0.1, 0.2]), 0.04), 30)  # moving when the e-stop hits
    f.estop("test")
    held = f.command()
    t = 0.3
    for d, step_dt in events:
        t += step_dt
        cmd, width = f.step(d, t)
        np.testing.assert_array_equal(cmd, held[0])
        assert width == held[1] and f.estopped
    assert f.interventions["estop"] == len(events)
