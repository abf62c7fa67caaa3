"""SimLoop: stream scheduling, thread-safe inputs, resets and real-time pacing, with a fake sim
and a fake clock (no MuJoCo, no sleeping)."""

import threading

import numpy as np
import pytest

from avdp_ros.sim.loop import SimLoop, _Reset


class FakeSim:
    def __init__(self, dt=0.002):
        self.dt, self.time, self.targets, self.widths, self.seeds = dt, 0.0, [], [], []

    def reset(self, seed):
        self.seeds.append(seed)
        self.time = 0.0
        return {"task": "fake", "seed": seed}

    def step(self, n=1):
        self.time += n * self.dt

    def set_target(self, pose):
        self.targets.append(pose)

    def set_gripper(self, w):
        self.widths.append(w)


def test_streams_fire_at_their_rates_on_sim_time():
    loop = SimLoop(FakeSim(0.001), real_time_factor=0)
    stamps = {"pose": [], "cam": []}
    loop.add_stream("pose", 200.0, stamps["pose"].append)
    loop.add_stream("cam", 30.0, stamps["cam"].append)
    loop.run(threading.Event(), max_sim_seconds=1.0)
    assert len(stamps["pose"]) in (200, 201)
    assert len(stamps["cam"]) in (30, 31)
    np.testing.assert_allclose(np.diff(stamps["pose"]), 0.005, atol=1e-9)
    # 30 Hz on a 1 ms grid: every period is 33 or 34 ms, never a burst or a gap
    assert set(np.round(np.diff(stamps["cam"]) * 1e3).astype(int)) <= {33, 34}


def test_inputs_apply_between_steps_and_only_latest_wins():
    sim = FakeSim()
    loop = SimLoop(sim, real_time_factor=0)
    loop.set_target(np.ones(7))
    loop.set_target(2 * np.ones(7))
    loop.set_gripper(0.03)
    loop.step_once()
    assert len(sim.targets) == 1 and sim.targets[0][0] == 2.0
    assert sim.widths == [0.03]
    loop.step_once()
    assert len(sim.targets) == 1  # nothing new: controller keeps the last target


def test_stamps_never_go_backwards_across_resets():
    sim = FakeSim()
    loop = SimLoop(sim, real_time_factor=0, clock_start=100.0)
    stamps = []
    loop.add_stream("pose", 100.0, stamps.append)
    loop.run(threading.Event(), max_sim_seconds=0.5)
    assert loop.reset_now(7) == {"task": "fake", "seed": 7}
    loop.run(threading.Event(), max_sim_seconds=0.5)
    assert np.all(np.diff(stamps) > 0)
    assert stamps[0] >= 100.0 and stamps[-1] == pytest.approx(101.0, abs=0.011)


def test_reset_from_another_thread_and_error_reporting():
    sim = FakeSim()
    loop = SimLoop(sim, real_time_factor=0)
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,))
    t.start()
    try:
        assert loop.request_reset(3)["seed"] == 3
        sim.reset = lambda seed: (_ for _ in ()).throw(ValueError("bad seed"))
        with pytest.raises(RuntimeError, match="seed 4 failed: bad seed"):
            loop.request_reset(4)
    finally:
        stop.set()
        t.join()
    with pytest.raises(TimeoutError, match="is the sim loop running"):
        loop.request_reset(5, timeout=0.05)


def test_real_time_pacing_sleeps_by_the_sim_lead():
    wall = [0.0]
    slept = []

    def sleep(dt):
        slept.append(dt)
        wall[0] += dt

    loop = SimLoop(FakeSim(0.002), real_time_factor=1.0, wall=lambda: wall[0], sleep=sleep)
    loop.run(threading.Event(), max_sim_seconds=1.0)
    # the fake wall clock only advances by our sleeps: 1 s of sim must have slept ~1 s
    assert sum(slept) == pytest.approx(1.0, abs=0.01)
    fast = SimLoop(FakeSim(0.002), real_time_factor=2.0, wall=lambda: wall[0], sleep=sleep)
    slept.clear()
    fast.run(threading.Event(), max_sim_seconds=1.0)
    assert sum(slept) == pytest.approx(0.5, abs=0.01)


def test_invalid_rates_are_rejected():
    with pytest.raises(ValueError, match="real_time_factor"):
        SimLoop(FakeSim(), real_time_factor=-1)
    with pytest.raises(ValueError, match="stream 'x'"):
        SimLoop(FakeSim()).add_stream("x", 0.0, print)


def test_wall_locked_stamps_follow_the_wall_clock_when_the_sim_is_slow():
    wall = [0.0]
    sim = FakeSim(0.002)
    real_step = sim.step

    def slow_step(n=1):  # each physics step costs 4 ms of wall time: the sim runs at half speed
        real_step(n)
        wall[0] += 0.004

    sim.step = slow_step
    loop = SimLoop(sim, real_time_factor=1.0, clock_start=1000.0, wall_locked=True,
                   wall=lambda: wall[0], sleep=lambda dt: wall.__setitem__(0, wall[0] + dt))
    stamps = []
    loop.add_stream("pose", 100.0, stamps.append)
    loop.run(threading.Event(), max_sim_seconds=1.0)
    assert loop.overruns > 0
    # stamps stay within the 50 ms re-anchoring bound (+ one 10 ms stream period + one step)
    # of the wall clock, and never go backwards; unlocked they would lag by ~1 s here
    assert abs(stamps[-1] - (1000.0 + wall[0])) < 0.05 + 0.01 + 0.004 + 1e-9
    assert np.all(np.diff(stamps) > 0)
    free = SimLoop(FakeSim(0.002), real_time_factor=1.0, clock_start=1000.0, wall_locked=False)
    assert not free.wall_locked


def test_wall_locked_stamps_do_not_drift_behind_the_wall_across_slow_resets():
    # Regression: each reset took wall time that sim time never counted, so after N episodes
    # the bridge's stamps lagged the wall clock (and every other node's stamps) by N resets.
    wall = [0.0]
    sim = FakeSim(0.002)
    real_reset = sim.reset

    def slow_reset(seed):  # a reset costs 300 ms of wall time (re-rendering, settling)
        wall[0] += 0.3
        return real_reset(seed)

    sim.reset = slow_reset
    loop = SimLoop(sim, real_time_factor=1.0, clock_start=1000.0, wall_locked=True,
                   wall=lambda: wall[0], sleep=lambda dt: wall.__setitem__(0, wall[0] + dt))
    stamps = []
    loop.add_stream("pose", 100.0, stamps.append)
    for episode in range(5):
        loop.run(threading.Event(), max_sim_seconds=0.5)
        with loop._lock:
            loop._reset = _Reset(episode)
        loop.step_once()  # applies the reset
        assert abs(loop.clock - (1000.0 + wall[0])) < 0.01, f"episode {episode}: stamp clock drifted"
    assert np.all(np.diff(stamps) > 0)  # and stamps still never go backwards
