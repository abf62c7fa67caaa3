"""The no-ROS closed-loop evaluator: chunk execution, interpolation, bad policy output."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="mujoco is not installed")

from avdp_ros.evaluation.sim_eval import EvalConfig, describe_failures, run_episode  # noqa: E402
from avdp_ros.sim.env import PandaSim, SimConfig  # noqa: E402


class ConstantPolicy:
    """Plans H copies of one fixed offset from the first observed pose."""

    def __init__(self, offset, horizon=8, width=0.0):
        self.offset, self.horizon, self.width = np.asarray(offset, float), horizon, width
        self.calls, self.observed, self.goal = 0, 0, None

    def reset(self):
        self.calls, self.observed, self.goal = 0, 0, None

    def observe(self, obs):
        self.observed += 1

    def infer(self, obs):
        assert obs["camera"].shape == (64, 64, 3) and obs["camera"].dtype == np.uint8
        assert obs["ee_pose"].shape == (7,) and isinstance(obs["instruction"], str)
        if self.goal is None:
            self.goal = obs["ee_pose"].astype(float).copy()
            self.goal[:3] += self.offset
        self.calls += 1
        return {"actions": np.tile(np.concatenate([self.goal, [self.width]]), (self.horizon, 1))}


@pytest.fixture(scope="module")
def sim():
    s = PandaSim(SimConfig(task="push", image_width=64, image_height=64))
    yield s
    s.close()


def test_chunks_are_executed_and_the_arm_follows(sim):
    cfg = EvalConfig(task="push", time_limit=2.0, execute_steps=4, image_size=(64, 64))
    policy = ConstantPolicy([0.05, 0.0, 0.05])
    res = run_episode(sim, policy, seed=0, cfg=cfg, keep_frames=True)
    assert not res.success and res.duration == 2.0
    # 2 s at 10 Hz with 4 actions executed per chunk -> 5 chunks, 20 observations
    assert policy.calls == len(res.infer_ms) == 5 and policy.observed == 15 and len(res.frames) == 20
    assert np.linalg.norm(sim.ee_pose()[:3] - policy.goal[:3]) < 0.01
    assert res.frames[0].shape == (64, 128, 3)
    # the arm never went near the cube: the failure diagnostics say so
    assert res.cube_moved < 1e-3 and abs(res.cube_max_z - 0.025) < 2e-3
    assert 0.12 - 1e-3 < res.goal_distance < 0.22 + 1e-3  # the task's cube-to-target range


def test_expert_lead_in_hands_over_to_the_policy(sim):
    """--expert-start: the scripted expert drives first (the policy only observes), then the policy
    plans from where the expert left the arm. A policy that holds its first pose succeeds only
    if the expert had time to finish the push (~4 s)."""
    for lead, solved in ((1.0, False), (5.0, True)):
        policy = ConstantPolicy([0.0, 0.0, 0.0])
        cfg = EvalConfig(task="push", time_limit=6.0, execute_steps=4, image_size=(64, 64), expert_start=lead)
        res = run_episode(sim, policy, seed=3, cfg=cfg, keep_frames=True)
        assert policy.observed >= round(lead * cfg.obs_hz)  # every lead-in frame was observed
        assert len(res.frames) == round(cfg.time_limit * cfg.obs_hz) or res.success
        assert res.success is solved
        assert (res.goal_distance < 0.05) is solved and (res.cube_moved > 0.05) is solved
        assert res.closest_goal <= res.goal_distance
        home = np.array([0.449, 0.0, 0.301])  # the reset pose
        assert np.linalg.norm(policy.goal[:3] - home) > 0.03  # the policy took over where the expert was
    with pytest.raises(ValueError, match="expert_start"):
        EvalConfig(expert_start=20.0, time_limit=15.0)


def test_sees_nominal_shows_the_policy_the_nominal_view_of_a_randomised_scene():
    """--sees nominal (diagnostic): in a randomised scene the policy gets the nominal scene's view of
    the same state; the episode itself (its physics) is the randomised one."""
    firsts = {}

    class Recording(ConstantPolicy):
        def __init__(self, name):
            super().__init__([0.0, 0.0, 0.0])
            self.name = name

        def infer(self, obs):
            firsts.setdefault(self.name, (obs["camera"].copy(), obs["wrist"].copy()))
            return super().infer(obs)

    for name, appearance, sees in (("nominal", "nominal", "scene"), ("train", "train", "scene"),
                                   ("train seen as nominal", "train", "nominal"),
                                   ("train, wrist seen as nominal", "train", "nominal_wrist")):
        s = PandaSim(SimConfig(task="push", image_width=64, image_height=64, appearance=appearance))
        try:
            cfg = EvalConfig(task="push", time_limit=0.5, image_size=(64, 64), appearance=appearance, sees=sees)
            run_episode(s, Recording(name), seed=2, cfg=cfg)
        finally:
            s.close()
    for cam in range(2):
        np.testing.assert_array_equal(firsts["train seen as nominal"][cam], firsts["nominal"][cam])
        assert np.abs(firsts["train"][cam].astype(int) - firsts["nominal"][cam]).mean() > 5  # the look differs
    np.testing.assert_array_equal(firsts["train, wrist seen as nominal"][0], firsts["train"][0])
    np.testing.assert_array_equal(firsts["train, wrist seen as nominal"][1], firsts["nominal"][1])
    with pytest.raises(ValueError, match="sees 'oracle': expected one of scene, nominal, nominal_camera"):
        EvalConfig(sees="oracle")


def test_non_finite_actions_are_refused(sim):
    class Bad(ConstantPolicy):
        def infer(self, obs):
            out = super().infer(obs)
            out["actions"][2, 0] = np.nan
            return out

    with pytest.raises(ValueError, match="expected finite"):
        run_episode(sim, Bad([0, 0, 0]), seed=0, cfg=EvalConfig(time_limit=1.0, image_size=(64, 64)))


def test_horizon_must_exceed_execute_steps(sim):
    with pytest.raises(ValueError, match="horizon 4 must exceed execute_steps 4"):
        run_episode(sim, ConstantPolicy([0, 0, 0], horizon=4), seed=0,
                    cfg=EvalConfig(time_limit=1.0, execute_steps=4, image_size=(64, 64)))


def test_failures_are_described():
    keys = ("seed", "success", "goal_distance_m", "closest_goal_m", "cube_moved_m", "cube_max_z_m")
    eps = [dict(zip(keys, row)) for row in ((0, True, 0.01, 0.01, 0.2, 0.12),
                                            (1, False, 0.2, 0.2, 0.0, 0.025),
                                            (2, False, 0.15, 0.15, 0.03, 0.026),
                                            (3, False, 0.07, 0.05, 0.2, 0.1),
                                            (4, False, 0.09, 0.07, 0.2, 0.1))]
    text = describe_failures({"task": "pick_place", "per_episode": eps})
    assert text == ("4 failures: 1 never moved the cube, 1 moved it without lifting it, "
                    "2 ended 8.0 cm (median; 7.0-9.0) from the goal's centre, having come within 6.0 cm (median)")
    push = describe_failures({"task": "push", "per_episode": eps})
    assert push.startswith("4 failures: 1 never moved the cube, 3 ended 9.0 cm")
    assert describe_failures({"task": "push", "per_episode": eps[:1]}) == "no failures"


def test_listed_seeds_run_in_their_order():
    from avdp_ros.evaluation.sim_eval import evaluate

    cfg = EvalConfig(task="push", episodes=50, seed=100, seeds=[9, 4], time_limit=0.3, image_size=(64, 64),
                     videos=0)
    assert cfg.episodes == 2 and cfg.episode_seeds() == [9, 4]
    assert EvalConfig(episodes=3, seed=100).episode_seeds() == [100, 101, 102]
    result = evaluate(ConstantPolicy([0.0, 0.0, 0.05]), cfg, progress=False)
    assert result["episodes"] == 2 and [e["seed"] for e in result["per_episode"]] == [9, 4]
    assert result["failed_seeds"] == [9, 4]


def test_config_is_validated():
    with pytest.raises(ValueError, match="execute_steps"):
        EvalConfig(execute_steps=0)
    with pytest.raises(ValueError, match="integer multiple"):
        EvalConfig(stream_hz=25.0)


def test_report_tables_eval_summaries_only(tmp_path):
    import json

    from avdp_ros.tools.eval import report

    (tmp_path / "eval_idm_push").mkdir()
    (tmp_path / "eval_idm_push" / "summary.json").write_text(json.dumps(
        {"task": "push", "episodes": 50, "success_rate": 0.92, "mean_duration_s": 5.31,
         "infer_ms_p50": 101.2, "infer_ms_p99": 180.7, "appearance": "heldout_light"}))
    (tmp_path / "data_push").mkdir()  # avdp-collect writes a summary.json of another shape
    (tmp_path / "data_push" / "summary.json").write_text(json.dumps({"episodes": 3, "successes": 3}))
    (tmp_path / "oracle_push").mkdir()  # avdp-eval --sees nominal
    (tmp_path / "oracle_push" / "summary.json").write_text(json.dumps(
        {"task": "push", "episodes": 100, "success_rate": 0.9, "mean_duration_s": 5.0, "appearance": "heldout_table",
         "sees": "nominal"}))
    lines = report(tmp_path).splitlines()
    assert len(lines) == 4
    # the binomial standard error in points: sqrt(0.92 * 0.08 / 50) = 3.8
    assert lines[2] == "| eval_idm_push | push | heldout_light | 92% (3.8) | 50 | 5.3 | 101 / 181 |"
    assert lines[3] == "| oracle_push | push | heldout_table, seen as nominal | 90% (3.0) | 100 | 5.0 | - |"


class FutureReader(ConstantPolicy):
    """A stand-in video policy: holds its pose and keeps the future frames it is handed."""

    def __init__(self, k=3):
        super().__init__([0.0, 0.0, 0.0])
        self.video = object()  # OracleFuture refuses policies without a video model
        self.cfg = SimpleNamespace(future_frames=k, cameras=("camera", "wrist"))
        self.futures = []

    def infer(self, obs, future_images=None):
        self.futures.append((obs, future_images))
        return super().infer(obs)


def test_oracle_future_is_the_expert_driving_on_in_a_branch(sim):
    """--future oracle: before every plan the expert drives a what-if copy of the physics for K
    observation periods; the frames rendered there are the future the IDM reads, and the episode
    itself continues as if no branch had run."""
    from avdp_ros.evaluation.oracle import OracleFuture

    cfg = EvalConfig(task="push", time_limit=1.0, execute_steps=4, image_size=(64, 64))
    reader = FutureReader(k=3)
    oracle = OracleFuture(reader, "push")
    res = run_episode(sim, oracle, seed=0, cfg=cfg, monitor=oracle)
    assert reader.calls == len(reader.futures) == 3 and reader.observed == 7 and not res.success
    for _, future in reader.futures:
        assert set(future) == {"camera", "wrist"}
        assert future["camera"].shape == (3, 64, 64, 3) and future["camera"].dtype == np.uint8
    obs, future = reader.futures[0]
    # the expert sets off at once: each predicted wrist frame differs more from the observed one
    change = [np.abs(future["wrist"][k].astype(int) - obs["wrist"]).mean() for k in range(3)]
    assert 0 < change[0] < change[2]
    # a branch leaves the episode untouched: the policy held its pose, the arm stayed put
    assert np.linalg.norm(sim.ee_pose()[:3] - reader.goal[:3]) < 0.01
    with pytest.raises(ValueError, match="needs a video policy"):
        OracleFuture(ConstantPolicy([0, 0, 0]), "push")


def _bench_module(name: str):
    """bench/NAME.py as a module (bench/ is scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_free_video_curve_tables_and_plots_arms_by_action_free_episodes(tmp_path):
    import json

    curve = _bench_module("free_video_curve")
    for name, task, scenes, p, n in [("pl_n300_nominal_push", "push", "nominal", 0.5, 100),
                                     ("pl_n0_nominal_push", "push", "nominal", 0.4, 100),
                                     ("pl_n0_heldout_table_push", "push", "heldout_table", 0.1, 50),
                                     ("base_push", "push", "nominal", 0.9, 50)]:  # no _n<N>_: not a curve point
        (tmp_path / "evals" / name).mkdir(parents=True)
        (tmp_path / "evals" / name / "summary.json").write_text(json.dumps(
            {"task": task, "appearance": scenes, "success_rate": p, "episodes": n, "mean_duration_s": 5.0}))
    curves = curve.collect(tmp_path / "evals")
    assert curves == {("pl", "nominal", "push"): [(0, 0.4, 100), (300, 0.5, 100)],
                      ("pl", "heldout_table", "push"): [(0, 0.1, 50)]}
    # the binomial standard error in points: sqrt(0.4 * 0.6 / 100) = 4.9
    assert "| pseudo | nominal | push | 0: 40 (4.9, 100), 300: 50 (5.0, 100) |" in curve.table(curves, {"pl": "pseudo"})
    out = tmp_path / "curve.png"
    assert curve.main(["--evals", str(tmp_path / "evals"), "--out", str(out), "--label", "pl=pseudo"]) == 0
    assert out.stat().st_size > 1000
    with pytest.raises(SystemExit, match="no <arm>_n<N>_"):
        curve.collect(tmp_path / "evals" / "base_push")


def test_table_factors_swap_one_table_parameter_at_a_time():
    import colorsys

    from avdp_ros.sim.appearance import draw

    factors = _bench_module("table_factors")
    drawn = draw("heldout_table", 13000)
    h, s, v = colorsys.rgb_to_hsv(*drawn.table_rgb)
    for name, swap in factors.VARIANTS.items():
        a = swap(drawn)
        others = {k: x for k, x in a.to_dict().items() if k not in ("table_texture", "table_rgb")}
        assert others == {k: x for k, x in drawn.to_dict().items() if k not in ("table_texture", "table_rgb")}, name
        if name.startswith("surface "):
            assert a.table_texture == name.split()[1] and a.table_rgb == drawn.table_rgb
        else:
            assert a.table_texture == drawn.table_texture
            h2, s2, v2 = colorsys.rgb_to_hsv(*a.table_rgb)
            assert np.isclose(s2, s) and np.isclose(v2, v * (0.8 if name == "value x0.8" else 1.0))
            if name.startswith("hue "):
                assert np.isclose(h2 * 360, float(name.split()[1]))
    seeds = factors.hard_seeds(5, 13100)
    assert seeds[0] == 13101 and len(seeds) == 5 and seeds == sorted(seeds)
    nominal = colorsys.rgb_to_hsv(*factors.ap.Appearance().table_rgb)[2]
    assert all(draw("heldout_table", x).table_texture == "gradient"
               and colorsys.rgb_to_hsv(*draw("heldout_table", x).table_rgb)[2] >= nominal for x in seeds)


def test_failures_by_look_groups_episodes_by_their_redrawn_appearance():
    from avdp_ros.sim.appearance import draw

    looks = _bench_module("failures_by_look")
    seeds = range(100000, 100012)
    summary = {"appearance": "heldout_table",
               "per_episode": [{"seed": s, "success": s % 3 == 0} for s in seeds]}
    groups = looks.by_look(summary)
    surfaces = {k: v for k, v in groups.items() if k.startswith("surface ") and "," not in k}
    assert sum(m for _, m in surfaces.values()) == len(seeds)  # every episode in exactly one surface
    assert sum(k for k, _ in surfaces.values()) == sum(s % 3 == 0 for s in seeds)
    assert set(surfaces) <= {"surface gradient", "surface noise"}  # the suite's own surfaces
    gradient = [s for s in seeds if draw("heldout_table", s).table_texture == "gradient"]
    assert surfaces.get("surface gradient", [0, 0])[1] == len(gradient)


def test_task_layouts_reads_the_cube_yaw_and_picks_layouts_by_it(capsys):
    from avdp_ros.sim.expert import body_yaw, wrap

    layouts = _bench_module("task_layouts")
    rows = layouts.layouts("pick_place", list(range(17000, 17040)))
    sim = PandaSim(SimConfig(task="pick_place", image_width=16, image_height=16))
    try:  # the same yaw the expert aligns its grasp with, a square's quarter turn wrapped away
        info = sim.reset(17003)
        cube = sim.object_poses()[info["object_names"][0]]
    finally:
        sim.close()
    assert rows[3]["cube_yaw_deg"] == pytest.approx(np.degrees(wrap(body_yaw(cube[3:]), np.pi / 2)), abs=0.05)
    yaws = [r["cube_yaw_deg"] for r in rows]
    assert all(-45 <= y < 45 for y in yaws) and min(yaws) < -10 < max(yaws)  # spread, not one constant
    success = {r["seed"]: r["cube_yaw_deg"] >= -10 for r in rows}
    table = layouts.by_sector(rows, success, "cube_yaw_deg", layouts.YAW_BINS)
    clockwise = sum(-45 <= y < -30 for y in yaws)
    assert f"| -45 to -30 | {clockwise} | 0% (0) |" in table and "| cube yaw (deg) |" in table
    assert layouts.main(["--task", "pick_place", "--first", "17000", "--count", "5", "--cube-yaw", "-45", "-10",
                         "--seeds-only"]) == 0
    picked = [int(s) for s in capsys.readouterr().out.split()]
    by_seed = {r["seed"]: r for r in rows}  # the first five such layouts lie among these 40 seeds
    assert len(picked) == 5 and all(-45 <= by_seed[s]["cube_yaw_deg"] <= -10 for s in picked)
