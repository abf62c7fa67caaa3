"""Chunk timing core (avdp_ros.control.chunks) with a fake clock: every time is passed in."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avdp_ros.control.chunks import ChunkConfig, ChunkScheduler, LatencyEstimator
from avdp_ros.control.safety import SafetyFilter, SafetyLimits
from avdp_ros.geometry import axis_angle_to_quat, quat_angle, slerp

DT = 0.125  # a binary fraction, so stamps like t_obs + i * dt compare exactly
Q0 = np.array([0.0, 0.0, 0.0, 1.0])


def make_chunk(xyz, quats=None, widths=None) -> np.ndarray:
    """(H, 8) chunk from positions (H, 3) and optional quaternions (H, 4) / widths (H,)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    h = xyz.shape[0]
    quats = np.tile(Q0, (h, 1)) if quats is None else np.asarray(quats, dtype=np.float64)
    widths = np.full(h, 0.04) if widths is None else np.asarray(widths, dtype=np.float64)
    return np.concatenate([xyz, quats, widths[:, None]], axis=1)


def line_chunk(h: int, x0: float, step: float = 0.0) -> np.ndarray:
    """Chunk moving along x from x0 by `step` per action (y = 0, z = 0.2)."""
    xyz = np.stack([x0 + step * np.arange(h), np.zeros(h), np.full(h, 0.2)], axis=1)
    return make_chunk(xyz)


def sched(**kw) -> ChunkScheduler:
    kw.setdefault("horizon", 8)
    kw.setdefault("execute_steps", 4)
    kw.setdefault("dt", DT)
    return ChunkScheduler(ChunkConfig(**kw))


# ---- config ----


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"horizon": 8, "execute_steps": 9}, "execute_steps 9 > horizon 8"),
        ({"horizon": 0}, "horizon"),
        ({"horizon": True}, "horizon"),
        ({"execute_steps": 2.5}, "execute_steps"),
        ({"dt": 0.0}, "dt"),
        ({"dt": float("nan")}, "dt"),
        ({"blend": "cubic"}, "blend 'cubic'|blend = 'cubic'"),
        ({"interpolation": "spline"}, "interpolation = 'spline'"),
        ({"latency_margin": -0.1}, "latency_margin"),
        ({"hold_s": float("inf")}, "hold_s"),
        ({"latency_offset": -0.01}, "latency_offset"),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChunkConfig(**kwargs)


def test_config_defaults_are_valid():
    cfg = ChunkConfig()
    assert 1 <= cfg.execute_steps <= cfg.horizon and cfg.dt > 0


# ---- stamping and late drops ----


def test_action_i_is_due_at_t_obs_plus_i_dt():
    s = sched()
    chunk = line_chunk(8, 0.4, 0.01)
    assert s.add_chunk(chunk, t_obs=10.0, now=10.0) == (8, 0)
    stamps, poses, widths = s.waypoints()
    np.testing.assert_array_equal(stamps, 10.0 + DT * np.arange(8))
    np.testing.assert_allclose(poses, chunk[:, :7])
    for i in range(8):
        pose, _ = s.target_at(10.0 + i * DT)
        np.testing.assert_allclose(pose, chunk[i, :7], atol=1e-12)


def test_committed_prefix_is_the_plan_at_the_new_chunks_due_times_before_it_lands():
    s = sched()
    assert s.committed(10.0, 10.5) is None  # no plan yet
    chunk = line_chunk(8, 0.4, 0.01)
    s.add_chunk(chunk, t_obs=10.0, now=10.0)
    # next observation at 10.25 (action 2's time); the chunk is expected at 10.25 + 0.3
    pre = s.committed(10.25, 10.55)
    due = 10.25 + DT * np.arange(3)  # 10.25, 10.375, 10.5 < 10.55
    assert pre.shape == (3, 8)
    for row, t in zip(pre, due):
        pose, width = s.target_at(t)
        np.testing.assert_allclose(row[:7], pose, atol=1e-12)
        assert row[7] == width
    np.testing.assert_allclose(pre[:, 0], 0.4 + 0.01 * np.arange(2, 5))
    assert s.committed(10.25, 10.25) is None  # lands at once: nothing committed
    assert len(s.committed(10.25, 99.0)) == 6  # never past the plan's end (10.875)
    assert len(s.committed(9.0, 99.0)) <= 7  # and always fewer than horizon rows
    assert s.committed(20.0, 21.0) is None  # the plan is stale by then


def test_latency_offset_shifts_every_stamp():
    s = sched(latency_offset=0.25)
    s.add_chunk(line_chunk(8, 0.4, 0.01), t_obs=10.0, now=10.0)
    np.testing.assert_array_equal(s.waypoints()[0], 10.25 + DT * np.arange(8))


def test_late_actions_are_dropped_and_counted():
    s = sched()
    chunk = line_chunk(8, 0.4, 0.01)
    # Arrives 0.3 s after its observation: actions due at 0, 0.125, 0.25 are late; 0.375 is not.
    update = s.add_chunk(chunk, t_obs=0.0, now=0.3)
    assert update == (5, 3)
    assert s.actions_dropped == 3
    stamps, poses, _ = s.waypoints()
    np.testing.assert_array_equal(stamps, DT * np.arange(3, 8))
    np.testing.assert_allclose(poses, chunk[3:, :7])


def test_action_due_exactly_now_is_kept():
    s = sched()
    assert s.add_chunk(line_chunk(8, 0.4), t_obs=0.0, now=2 * DT) == (6, 2)


def test_fully_late_chunk_leaves_plan_unchanged():
    s = sched()
    s.add_chunk(line_chunk(8, 0.4), t_obs=0.0, now=0.0)
    before = s.waypoints()
    assert s.add_chunk(line_chunk(8, 0.6), t_obs=0.1, now=5.0) == (0, 8)
    for a, b in zip(before, s.waypoints()):
        np.testing.assert_array_equal(a, b)
    assert s.actions_dropped == 8 and s.chunks_added == 1


# ---- validation ----


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c[:-1], r"shape \(7, 8\): expected \(8, 8\)"),
        (lambda c: c[:, :7], r"shape \(8, 7\): expected \(8, 8\)"),
        (lambda c: c.__setitem__((3, 7), np.nan) or c, "non-finite gripper = nan at action 3"),
        (lambda c: c.__setitem__((5, 1), np.inf) or c, "non-finite y = inf at action 5"),
        (lambda c: c.__setitem__((2, slice(3, 7)), [0.0, 0.0, 0.0, 2.0]) or c, "quaternion norm 2.0000 at action 2"),
        (lambda c: c.__setitem__((0, slice(3, 7)), 0.0) or c, "quaternion norm 0.0000 at action 0"),
        (lambda c: [["a"] * 8] * 8, "not a numeric array"),
    ],
)
def test_malformed_chunk_raises_and_keeps_the_old_plan(mutate, message):
    s = sched()
    s.add_chunk(line_chunk(8, 0.4), t_obs=0.0, now=0.0)
    before = s.waypoints()
    with pytest.raises(ValueError, match=message):
        s.add_chunk(mutate(line_chunk(8, 0.6)), t_obs=0.1, now=0.1)
    for a, b in zip(before, s.waypoints()):
        np.testing.assert_array_equal(a, b)


def test_non_finite_times_and_out_of_order_chunks_are_refused():
    s = sched()
    with pytest.raises(ValueError, match="finite times"):
        s.add_chunk(line_chunk(8, 0.4), t_obs=float("nan"), now=0.0)
    s.add_chunk(line_chunk(8, 0.4), t_obs=1.0, now=1.0)
    with pytest.raises(ValueError, match="older than the current plan"):
        s.add_chunk(line_chunk(8, 0.4), t_obs=0.5, now=1.1)


def test_near_unit_quaternions_are_normalised_without_touching_the_input():
    s = sched()
    chunk = line_chunk(8, 0.4)
    chunk[:, 6] = 1.0005  # within tolerance
    original = chunk.copy()
    s.add_chunk(chunk, t_obs=0.0, now=0.0)
    np.testing.assert_allclose(np.linalg.norm(s.waypoints()[1][:, 3:], axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(chunk, original)


# ---- interpolation ----


def test_linear_interpolation_midpoint_and_slerp():
    s = sched(horizon=2, execute_steps=1)
    q1 = axis_angle_to_quat(np.array([0.0, 0.0, 1.2]))
    chunk = make_chunk([[0.4, 0.0, 0.2], [0.5, 0.1, 0.3]], quats=[Q0, q1], widths=[0.0, 0.08])
    s.add_chunk(chunk, t_obs=0.0, now=0.0)
    pose, width = s.target_at(0.25 * DT)
    np.testing.assert_allclose(pose[:3], [0.425, 0.025, 0.225], atol=1e-12)
    np.testing.assert_allclose(pose[3:], slerp(Q0, q1, 0.25), atol=1e-12)
    assert quat_angle(Q0, pose[3:]) == pytest.approx(0.3, abs=1e-9)  # a quarter of the 1.2 rad turn
    assert width == pytest.approx(0.02)


def test_cubic_passes_through_waypoints_and_is_linear_on_straight_constant_speed():
    lin, cub = sched(), sched(interpolation="cubic")
    chunk = line_chunk(8, 0.4, 0.02)
    for s in (lin, cub):
        s.add_chunk(chunk, t_obs=0.0, now=0.0)
    for t in np.linspace(0.0, 7 * DT, 57):
        np.testing.assert_allclose(cub.target_at(t)[0], lin.target_at(t)[0], atol=1e-12)


def test_cubic_is_c1_at_a_corner_where_linear_is_not():
    # An L-shaped path: +x for four actions, then +y.
    xyz = [[0.4 + 0.02 * min(i, 3), 0.02 * max(i - 3, 0), 0.2] for i in range(8)]
    lin, cub = sched(), sched(interpolation="cubic")
    for s in (lin, cub):
        s.add_chunk(make_chunk(xyz), t_obs=0.0, now=0.0)
    corner, h = 3 * DT, 1e-6

    def velocity_jump(s: ChunkScheduler) -> float:
        left = (s.target_at(corner)[0][:3] - s.target_at(corner - h)[0][:3]) / h
        right = (s.target_at(corner + h)[0][:3] - s.target_at(corner)[0][:3]) / h
        return float(np.linalg.norm(right - left))

    np.testing.assert_allclose(cub.target_at(corner)[0][:3], xyz[3], atol=1e-12)
    assert velocity_jump(lin) > 0.1  # 0.16 m/s -> 0.16 m/s at right angles
    assert velocity_jump(cub) < 1e-4


def test_target_at_before_after_and_past_the_hold_window():
    s = sched(hold_s=0.2)
    assert s.target_at(0.0) is None and s.plan_end() is None and s.remaining(0.0) == 0.0
    chunk = line_chunk(8, 0.4, 0.01)
    s.add_chunk(chunk, t_obs=1.0, now=1.0)
    end = 1.0 + 7 * DT
    assert s.plan_end() == end
    assert s.remaining(1.5) == pytest.approx(end - 1.5)
    assert s.remaining(end + 1.0) == 0.0
    np.testing.assert_allclose(s.target_at(0.5)[0], chunk[0, :7])  # before the start: first waypoint
    np.testing.assert_allclose(s.target_at(end + 0.19)[0], chunk[-1, :7])  # grace: hold the last one
    assert s.target_at(end + 0.21) is None  # stale
    assert s.target_at(float("nan")) is None


# ---- blending ----


def two_chunks(blend: str) -> ChunkScheduler:
    """Plan at x = 0.5, then at t = 0.5 a chunk at x = 0.6 (a 10 cm disagreement)."""
    s = sched(blend=blend)
    s.add_chunk(line_chunk(8, 0.5), t_obs=0.0, now=0.0)
    s.add_chunk(line_chunk(8, 0.6), t_obs=0.5, now=0.5)
    return s


def test_blend_none_replaces_from_the_first_new_action():
    s = two_chunks("none")
    stamps, poses, _ = s.waypoints()
    new = stamps >= 0.5
    np.testing.assert_allclose(poses[new, 0], 0.6)
    np.testing.assert_allclose(poses[~new, 0], 0.5)  # the executing part of the old plan stays


def test_blend_linear_ramps_over_the_overlap():
    s = two_chunks("linear")
    # Old plan ends at 0.875; the weight goes 0 -> 1 from 0.5 to 0.875 + dt = 1.0.
    for t, x in [(0.5, 0.5), (0.625, 0.525), (0.75, 0.55), (0.875, 0.575), (1.0, 0.6), (1.375, 0.6)]:
        assert s.target_at(t)[0][0] == pytest.approx(x, abs=1e-12)


def max_speed_of_target(s: ChunkScheduler, t0: float, t1: float) -> float:
    ts = np.linspace(t0, t1, 2001)
    xyz = np.array([s.target_at(t)[0][:3] for t in ts])
    return float(np.max(np.linalg.norm(np.diff(xyz, axis=0), axis=1) / np.diff(ts)))


def test_linear_blend_is_smoother_than_replacing():
    assert max_speed_of_target(two_chunks("linear"), 0.0, 1.375) == pytest.approx(0.2, rel=1e-6)  # 0.1 m / 0.5 s
    assert max_speed_of_target(two_chunks("none"), 0.0, 1.375) >= 0.8 - 1e-9  # 0.1 m in one 0.125 s step


@settings(max_examples=100, deadline=None)
@given(
    offset=st.floats(0.05, 1.05),  # the first plan ends at 0.875 and is held until 1.075
    jump=st.floats(-0.2, 0.2),
    turn=st.floats(-3.0, 3.0),
    blend=st.sampled_from(["linear", "none"]),
    interpolation=st.sampled_from(["linear", "cubic"]),
)
def test_target_at_now_is_continuous_across_add_chunk(offset, jump, turn, blend, interpolation):
    s = sched(blend=blend, interpolation=interpolation)
    rng = np.random.default_rng(0)
    first = make_chunk(0.5 + 0.05 * rng.standard_normal((8, 3)), widths=np.linspace(0.0, 0.08, 8))
    s.add_chunk(first, t_obs=0.0, now=0.0)
    now = offset
    before = s.target_at(now)
    q = axis_angle_to_quat(np.array([0.0, 0.0, turn]))
    second = make_chunk(0.5 + jump + 0.05 * rng.standard_normal((8, 3)), quats=np.tile(q, (8, 1)))
    s.add_chunk(second, t_obs=now - 0.05, now=now)  # first kept action due at now + 0.075
    after = s.target_at(now)
    np.testing.assert_allclose(after[0][:3], before[0][:3], atol=1e-9)
    assert quat_angle(after[0][3:], before[0][3:]) < 1e-6
    assert after[1] == pytest.approx(before[1], abs=1e-12)
    # ... and the new chunk is what the plan follows from its first kept action on ("none"),
    # or once the old plan has run out ("linear").
    t_new = now + 0.075 if blend == "none" else max(now + 0.075, 0.875 + DT)
    i = math.ceil((t_new - (now - 0.05)) / DT - 1e-9)  # the first action due at or after t_new
    if i < 8:  # (with an early second chunk, the ramp outlasts it)
        np.testing.assert_allclose(s.target_at(now - 0.05 + i * DT)[0][:3], second[i, :3], atol=1e-9)


def test_stale_old_plan_is_not_blended():
    s = sched(blend="linear")
    s.add_chunk(line_chunk(8, 0.5), t_obs=0.0, now=0.0)
    s.add_chunk(line_chunk(8, 0.6), t_obs=2.0, now=2.0)  # the old plan ended at 0.875
    stamps, poses, _ = s.waypoints()
    np.testing.assert_array_equal(stamps, 2.0 + DT * np.arange(8))
    np.testing.assert_allclose(poses[:, 0], 0.6)


def test_chunk_boundary_jump_through_the_safety_filter_respects_the_speed_limit():
    s = two_chunks("none")  # the worst case: a 10 cm step at t = 0.5
    limits = SafetyLimits()
    f = SafetyFilter(limits)
    f.reset(s.target_at(0.0)[0], 0.04, now=0.0)
    prev = f.command()[0]
    t, rate = 0.0, 0.002
    for _ in range(700):
        t += rate
        cmd, _ = f.step(s.target_at(t), t)
        assert np.linalg.norm(cmd[:3] - prev[:3]) <= limits.max_linear_speed * rate * (1 + 1e-9)
        prev = cmd
    assert cmd[0] == pytest.approx(0.6, abs=1e-6)  # and it did get there


# ---- when to infer ----


def test_should_infer_without_plan_and_not_while_in_flight():
    s = sched()
    assert s.should_infer(0.0, latency_estimate=0.2)
    s.mark_inference_started()
    assert s.inference_in_flight and not s.should_infer(0.0, latency_estimate=0.2)
    s.mark_inference_finished()
    assert s.should_infer(0.0, latency_estimate=0.2)
    with pytest.raises(ValueError, match="finite"):
        s.should_infer(0.0, latency_estimate=float("nan"))


def test_should_infer_fires_latency_plus_margin_before_the_executed_part_ends():
    # Binary fractions throughout, so the threshold is hit exactly on a tick.
    est = LatencyEstimator(warmup=2, initial=1.0)
    for sample in [3.0, 3.0] + [0.25] * 10:  # the warm-up outliers must not count
        est.add(sample)
    assert est.estimate() == 0.25
    s = sched(horizon=16, execute_steps=8, dt=0.125, latency_margin=0.0625)
    s.add_chunk(line_chunk(16, 0.5), t_obs=0.0, now=0.25)
    # switch = 0 + 8 * 0.125 = 1.0 s; start once now + 0.25 + 0.0625 >= 1.0, i.e. from 0.6875 s.
    ticks = np.arange(16, 64) / 64
    fired = [t for t in ticks if s.should_infer(t, est.estimate())]
    assert fired[0] == 0.6875 and fired == list(ticks[ticks >= 0.6875])
    assert not s.should_infer(0.6875, 0.25, margin=0.0)  # the margin matters
    assert s.should_infer(0.25, 0.25, execute_steps=4)  # and so does execute_steps (switch 0.5)
    assert not s.should_infer(0.125, 0.25, execute_steps=4)


@pytest.mark.parametrize("latency", [0.05, 0.23, 0.55])
def test_closed_loop_with_a_fake_clock_never_runs_dry(latency):
    """Commander ticks at 100 Hz; inference takes `latency`; the plan must never go stale."""
    cfg = ChunkConfig(horizon=16, execute_steps=8, dt=0.1, latency_margin=0.05, hold_s=0.0)
    s, est = ChunkScheduler(cfg), LatencyEstimator(warmup=0, initial=0.4, min_samples=1)
    pending: tuple[float, float] | None = None  # (t_obs, arrival)
    starts, drops = [], []
    for k in range(1000):
        now = k * 0.01
        if pending is not None and now >= pending[1] - 1e-9:
            t_obs, _ = pending
            drops.append(s.add_chunk(line_chunk(16, 0.5, 0.001), t_obs=t_obs, now=now).dropped)
            est.add(now - t_obs)
            s.mark_inference_finished()
            pending = None
        if s.should_infer(now, est.estimate()):
            s.mark_inference_started()
            starts.append(now)
            pending = (now, now + latency)
        if now > 1.0:
            assert s.target_at(now) is not None, f"plan ran dry at t = {now:.2f}"
    assert all(d == math.ceil(latency / 0.1) for d in drops)
    # Each chunk takes over at arrival and should hand over at its switch time t_obs + 0.8 s,
    # so the next starts latency + margin before that, or at once when inference is that slow.
    gaps = np.diff(starts[2:])
    assert np.allclose(gaps, max(0.8 - latency - 0.05, latency), atol=0.011)


# ---- latency estimator ----


def test_latency_estimator_warmup_window_and_percentiles():
    est = LatencyEstimator(window=20, warmup=2, percentile=90, initial=0.3, min_samples=3)
    assert est.estimate() == 0.3 and est.percentile(50) is None
    assert math.isnan(est.summary()["p50"])
    for sample in (5.0, 5.0, 0.1, 0.1):
        est.add(sample)
    assert len(est) == 2 and est.estimate() == 0.3  # warm-up excluded, not enough samples yet
    est.add(0.1)
    assert est.estimate() == pytest.approx(0.1)
    for i in range(25):  # fills the window of 20 with 0.25 .. 0.44; everything older is gone
        est.add(0.2 + 0.01 * (i + 1))
    kept = 0.2 + 0.01 * np.arange(6, 26)
    assert len(est) == 20
    assert est.estimate() == pytest.approx(np.percentile(kept, 90))
    summary = est.summary()
    assert summary["p50"] == pytest.approx(np.percentile(kept, 50))
    assert summary["p99"] == pytest.approx(np.percentile(kept, 99))
    assert summary["n"] == 20


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_latency_estimator_rejects_impossible_samples(bad):
    with pytest.raises(ValueError, match="latency sample"):
        LatencyEstimator().add(bad)


def test_latency_estimator_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_samples"):
        LatencyEstimator(window=5, min_samples=6)
    with pytest.raises(ValueError, match="percentile"):
        LatencyEstimator(percentile=120)


def test_control_cores_do_not_import_ros():
    code = ("import sys, avdp_ros.control.chunks, avdp_ros.control.safety; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosidl_runtime_py', 'mujoco')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
