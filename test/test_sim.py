"""Tests of the pure-Python simulation core (no ROS): controller, API checks, cameras, tasks, experts."""

from __future__ import annotations

import os
import threading

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

mujoco = pytest.importorskip("mujoco")

from avdp_ros.geometry import quat_angle, quat_mul, quat_to_mj  # noqa: E402
from avdp_ros.sim.env import PandaSim, SimConfig  # noqa: E402
from avdp_ros.sim.expert import PerturbConfig, TargetPerturbation, make_expert, run_episode  # noqa: E402
from avdp_ros.sim.tasks import CUBE_HALF, TASKS  # noqa: E402


@pytest.fixture(scope="module")
def push_sim():
    sim = PandaSim(SimConfig(task="push"))
    yield sim
    sim.close()


@pytest.fixture(scope="module")
def pick_sim():
    sim = PandaSim(SimConfig(task="pick_place"))
    yield sim
    sim.close()


def _yaw(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])


def test_config_validation():
    with pytest.raises(ValueError, match="task"):
        SimConfig(task="juggle")
    with pytest.raises(ValueError, match="physics_dt"):
        SimConfig(physics_dt=0.01)
    with pytest.raises(ValueError, match="cameras"):
        SimConfig(cameras=("camera", "nose"))
    with pytest.raises(ValueError, match="workspace"):
        SimConfig(workspace_min=(0.5, 0, 0), workspace_max=(0.4, 1, 1))


def test_controller_reaches_target(push_sim):
    sim = push_sim
    sim.reset(0)
    home = sim.ee_pose()
    assert np.allclose(sim.target(), home, atol=1e-9)
    goal = np.concatenate([[0.55, 0.12, 0.20], quat_mul(_yaw(0.5), home[3:])])
    used = sim.set_target(goal)
    assert np.allclose(used, goal)
    sim.step(int(2.0 / sim.physics_dt))  # 2 s of sim time
    ee = sim.ee_pose()
    assert np.linalg.norm(ee[:3] - goal[:3]) < 0.01
    assert np.degrees(quat_angle(ee[3:], goal[3:])) < 3.0
    assert np.linalg.norm(sim.ee_velocity()) < 0.05  # settled, not oscillating


def test_set_target_rejects_bad_input_and_clamps(push_sim):
    sim = push_sim
    sim.reset(0)
    pose = sim.ee_pose()
    before = sim.target()
    for bad in (np.nan, np.inf, -np.inf):
        p = pose.copy()
        p[1] = bad
        with pytest.raises(ValueError, match="NaN/inf"):
            sim.set_target(p)
    with pytest.raises(ValueError):
        sim.set_target(np.array([0.5, 0, 0.3, 0, 0, 0, 0]))  # zero quaternion
    with pytest.raises(ValueError, match="shape"):
        sim.set_target(np.zeros(6))
    assert np.allclose(sim.target(), before)  # rejected targets leave the old one in place
    far = np.array([5.0, -5.0, -1.0, *pose[3:]])
    used = sim.set_target(far)
    assert np.allclose(used[:3], [sim.cfg.workspace_max[0], sim.cfg.workspace_min[1], sim.cfg.workspace_min[2]])
    unnormalised = sim.set_target(np.array([0.5, 0.0, 0.3, 0.0, 0.0, 0.0, 2.0]))
    assert np.isclose(np.linalg.norm(unnormalised[3:]), 1.0)
    assert sim.set_gripper(0.5) == pytest.approx(0.08)
    assert sim.set_gripper(-1.0) == 0.0
    with pytest.raises(ValueError):
        sim.set_gripper(float("nan"))


def test_gripper_opens_and_closes(pick_sim):
    sim = pick_sim
    sim.reset(0)
    assert sim.gripper_width() == pytest.approx(0.08, abs=1e-3)
    sim.set_gripper(0.02)
    sim.step(400)
    assert sim.gripper_width() == pytest.approx(0.02, abs=3e-3)
    assert sim.finger_positions().shape == (2,) and sim.finger_velocities().shape == (2,)
    assert sim.joint_positions().shape == (7,)


def test_render_shapes_and_content(pick_sim):
    sim = pick_sim
    sim.reset(1)
    images = {cam: sim.render(cam) for cam in ("camera", "wrist")}
    for img in images.values():
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert img.std() > 5.0  # not a constant image
    assert np.abs(images["camera"].astype(int) - images["wrist"].astype(int)).mean() > 10.0
    fx, fy, cx, cy = sim.camera_intrinsics("camera")
    assert fx == fy > 0 and (cx, cy) == (64.0, 64.0)
    with pytest.raises(ValueError, match="camera"):
        sim.render("nose")


def test_render_from_another_thread_and_custom_size():
    sim = PandaSim(SimConfig(task="push", image_width=96, image_height=64))
    out = {}
    try:
        worker = threading.Thread(target=lambda: out.update(img=sim.render("wrist")))
        worker.start()
        worker.join(timeout=30)
        assert out["img"].shape == (64, 96, 3)
        assert sim.render("camera").shape == (64, 96, 3)  # and from this thread too
    finally:
        sim.close()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_reset_is_deterministic_per_seed(task, push_sim, pick_sim):
    sim = push_sim if task == "push" else pick_sim
    info = sim.reset(7)
    assert info["task"] == task and info["seed"] == 7 and info["instruction"]
    assert list(sim.object_poses()) == info["object_names"]
    a = sim.object_poses()
    sim.step(50)
    sim.reset(7)
    b = sim.object_poses()
    sim.reset(8)
    c = sim.object_poses()
    for name in a:
        assert np.allclose(a[name], b[name])
    assert not np.allclose(a["cube"], c["cube"])
    assert sim.time == 0.0


def _set_cube(sim, pos, yaw=0.0):
    m, d = sim.model, sim.data
    adr = m.jnt_qposadr[m.body("cube").jntadr[0]]
    d.qpos[adr:adr + 3] = pos
    d.qpos[adr + 3:adr + 7] = quat_to_mj(_yaw(yaw))
    mujoco.mj_forward(m, d)


def test_push_success_predicate(push_sim):
    sim = push_sim
    sim.reset(3)
    assert not sim.success()
    goal = sim.object_poses()["target"]
    _set_cube(sim, [goal[0] + 0.02, goal[1] - 0.01, CUBE_HALF], yaw=0.3)
    sim.step(100)
    assert sim.success()
    _set_cube(sim, [goal[0] + 0.08, goal[1], CUBE_HALF])
    sim.step(10)
    assert not sim.success()


def test_pick_place_success_predicate(pick_sim):
    sim = pick_sim
    sim.reset(3)
    assert not sim.success()
    bin_pos = sim.object_poses()["bin"]
    _set_cube(sim, [bin_pos[0], bin_pos[1], 0.004 + CUBE_HALF + 0.002])
    sim.step(200)
    assert sim.success()
    _set_cube(sim, [bin_pos[0], bin_pos[1], 0.2])  # above the bin, falling: not resting
    sim.step(5)
    assert not sim.success()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_succeeds(task, push_sim, pick_sim):
    sim = push_sim if task == "push" else pick_sim
    expert = make_expert(task)
    for seed in (0, 1):
        result = run_episode(sim, expert, seed)
        assert result["done"] and result["success"], f"{task} seed {seed}: {result}"
        assert result["duration"] < 12.0


def test_perturbation_bumps_are_bounded_seeded_and_leave_quiet_gaps():
    cfg = PerturbConfig(pos_amplitude=0.04, yaw_amplitude=0.2)
    ts = np.arange(0.0, 20.0, 0.02)
    offs = [TargetPerturbation(cfg, seed).offset for seed in (3, 3, 4)]
    series = [np.array([np.r_[f(t)[0], f(t)[1]] for t in ts]) for f in offs]
    assert np.array_equal(series[0], series[1]) and not np.array_equal(series[0], series[2])
    pos = np.linalg.norm(series[0][:, :3], axis=1)
    assert pos.max() <= 0.04 + 1e-12 and pos.max() > 0.01  # bumps happen, never beyond the amplitude
    assert np.abs(series[0][:, 3]).max() <= 0.2 + 1e-12
    assert (pos < 1e-9).mean() > 0.15  # quiet gaps where the expert can reach its waypoints
    assert np.abs(np.diff(pos)).max() < 0.04 * np.pi * 0.02 / 0.4 + 1e-9  # smooth: no jumps
    target = np.array([0.5, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0])
    off = TargetPerturbation(PerturbConfig(), 0).apply(target, 1.0)
    assert np.array_equal(off, target)  # amplitude 0 = off
    with pytest.raises(ValueError, match="pos_amplitude"):
        PerturbConfig(pos_amplitude=0.5)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_recovers_from_perturbations(task, push_sim, pick_sim):
    sim = push_sim if task == "push" else pick_sim
    pert = TargetPerturbation(PerturbConfig(pos_amplitude=0.04, yaw_amplitude=0.2))
    result = run_episode(sim, make_expert(task), 2, perturb=pert)
    assert result["done"] and result["success"], f"{task} perturbed: {result}"


def test_leash_keeps_the_label_near_a_robot_that_does_not_follow(push_sim):
    """DAgger labelling: the robot stays put (another driver), the expert's stream may not run away."""
    sim = push_sim
    sim.reset(4)
    ee = sim.ee_pose()
    free, leashed = make_expert("push"), make_expert("push")
    for k in range(100):  # 2 s of 50 Hz ticks while the TCP does not move
        t = 0.02 * k
        target_free, _ = free.act(t, ee, sim.gripper_width(), sim.object_poses())
        leashed.leash(ee, 0.03)
        target, _ = leashed.act(t, ee, sim.gripper_width(), sim.object_poses())
    assert np.linalg.norm(target_free[:3] - ee[:3]) > 0.1  # unleashed: 10+ cm ahead of the robot
    lead = target[:3] - ee[:3]
    assert np.linalg.norm(lead) <= 0.03 + 0.25 * 0.02 + 1e-9  # leash + one tick of streaming
    # ... and it still points where the expert is going
    way = target_free[:3] - ee[:3]
    assert lead @ way / (np.linalg.norm(lead) * np.linalg.norm(way)) > 0.95


@pytest.mark.parametrize("task", sorted(TASKS))
def test_leashed_expert_still_solves_the_task(task, push_sim, pick_sim):
    """Driving through its own leashed labels (what a perfect DAgger student would do) succeeds:
    the leash changes the lead, not the plan."""
    sim = push_sim if task == "push" else pick_sim
    sim.reset(6)
    expert = make_expert(task)
    while sim.time < 20.0 and not expert.done:
        expert.leash(sim.ee_pose(), 0.03)
        pose, width = expert.act(sim.time, sim.ee_pose(), sim.gripper_width(), sim.object_poses())
        sim.set_target(pose)
        sim.set_gripper(width)
        sim.step(20)
    sim.step(500)
    assert expert.done and sim.success()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_resync_never_fires_on_the_experts_own_trajectory(task, push_sim, pick_sim):
    """Label mode re-syncs the phase with the state; when the expert drives, the state is always
    in the phase it is in, so labels of expert-driven runs are unchanged."""
    sim = push_sim if task == "push" else pick_sim
    for seed in (0, 1):
        sim.reset(seed)
        expert = make_expert(task)
        phases = set()
        while sim.time < 15.0 and not expert.done:
            ee, w, objects = sim.ee_pose(), sim.gripper_width(), sim.object_poses()
            if expert.cmd is not None:
                before = expert.phase
                expert.resync(sim.time, ee, w, objects)
                assert expert.phase == before, f"{task} seed {seed}: resync moved phase {before} -> {expert.phase}"
            phases.add(expert.phase)
            pose, width = expert.act(sim.time, ee, w, objects)
            sim.set_target(pose)
            sim.set_gripper(width)
            sim.step(20)
        assert expert.done and len(phases) >= 4


def _objects(**poses) -> dict:
    return {k: np.r_[v, 1.0, 0.0, 0.0, 0.0] for k, v in poses.items()}


def test_resync_labels_follow_the_policys_state():
    from avdp_ros.sim.expert import down_pose

    start = down_pose([0.45, 0.0, 0.30])
    # pick: the policy already holds the cube 10 cm up while the expert waits above the cube
    e = make_expert("pick_place")
    objects = _objects(cube=[0.40, -0.10, 0.025], bin=[0.5, 0.2, 0.0])
    e.act(0.0, start, 0.08, objects)
    assert e.phase == 0
    holding = down_pose([0.40, -0.10, 0.10])
    in_hand = _objects(cube=[0.40, -0.10, 0.09], bin=[0.5, 0.2, 0.0])
    e.resync(0.1, holding, 0.05, in_hand)
    target, width = e.act(0.1, holding, 0.05, in_hand)
    assert e.phase == 3 and width == 0.0 and target[2] > holding[2]  # keep it closed and lift, not "open"
    # ... and drops it on the way to the bin: open and pick it up again
    e.goto(4, 0.2)
    e.resync(0.3, down_pose([0.45, 0.05, 0.16]), 0.0, objects)
    assert e.phase == 0 and e.act(0.3, down_pose([0.45, 0.05, 0.16]), 0.0, objects)[1] == e.open_width
    # ... and carries it over the bin, but never opens: the expert (which "opened" and moved on,
    # or finished) must say "lower and open here", not "up and away" with the cube in hand
    over_bin = down_pose([0.51, 0.19, 0.08])
    carried = _objects(cube=[0.51, 0.19, 0.07], bin=[0.5, 0.2, 0.0])
    for stale in ("phase 7", "done"):
        e.goto(7, 1.0)
        e._done = stale == "done"
        e.resync(1.1, over_bin, 0.05, carried)
        assert e.phase == 5 and not e.done, stale
        ee = over_bin
        for k in range(50):  # lower to the release height over the bin centre, then open there
            target, width = e.act(1.1 + 0.02 * k, ee, 0.05, carried)
            ee = target  # an arm that tracks perfectly
            if e.phase == 6:
                break
        target, width = e.act(1.1 + 0.02 * (k + 1), ee, 0.05, carried)
        assert e.phase == 6 and width == e.open_width
        assert np.allclose(target[:3], [0.5, 0.2, e.release_z], atol=1e-6)
    # ... or it lowered the cube over the bin before the carrying height was reached: lower and
    # open here, not "up to the carrying height first"
    e.goto(4, 1.5)
    e.resync(1.6, over_bin, 0.05, carried)
    assert e.phase == 5
    # ... still holding it beside the bin: carry it over first
    e.goto(7, 2.0)
    e.resync(2.1, down_pose([0.40, 0.19, 0.08]), 0.05, _objects(cube=[0.40, 0.19, 0.07], bin=[0.5, 0.2, 0.0]))
    assert e.phase == 4
    # push: the policy went straight down behind the cube, in line with the target: push now
    p = make_expert("push")
    objects = _objects(cube=[0.45, 0.0, 0.025], target=[0.45, 0.15, 0.0])  # push along +y
    p.act(0.0, start, 0.0, objects)
    behind = down_pose([0.45, -0.025 - p.finger_reach - 0.01, p.push_z])
    p.resync(0.1, behind, 0.0, objects)
    assert p.phase == 2
    # ... low beside the cube instead: lift before coming round, do not sweep through it
    q = make_expert("push")
    q.act(0.0, start, 0.0, objects)
    beside = down_pose([0.52, 0.0, p.push_z])
    q.resync(0.1, beside, 0.0, objects)
    q.leash(beside, 0.02)  # as the labeller does: the stream starts from the TCP
    target, _ = q.act(0.12, beside, 0.0, objects)
    up = target[:3] - beside[:3]
    assert q.phase == 4 and up[2] > 0.01 and np.linalg.norm(up[:2]) < 0.01
