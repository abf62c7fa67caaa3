"""In-process DAgger (`avdp-dagger`, `sim.dagger`): a policy drives, the leashed expert labels,
and the episodes are a dataset the training CLIs read like a converted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="mujoco is not installed")

from conftest import tiny_idm_checkpoint  # noqa: E402

from avdp_ros.data.dataset import EpisodeDataset  # noqa: E402
from avdp_ros.evaluation.sim_eval import EvalConfig  # noqa: E402
from avdp_ros.sim.dagger import ExpertLabeller  # noqa: E402
from avdp_ros.sim.expert import make_expert  # noqa: E402

TICK = 0.25 / 50.0  # the expert's stream may move max_speed / 50 Hz past the leash in one tick


class Hold:
    """A policy that keeps the arm where it is (a real PolicyLike: chunk = the current pose)."""

    obs_hz = 10.0

    def reset(self) -> None:
        pass

    def infer(self, obs: dict) -> dict:
        a = np.concatenate([obs["ee_pose"], [obs["gripper"]]])
        return {"actions": np.tile(a, (8, 1))}


def test_labels_point_where_the_expert_goes_on_a_leash(tmp_path: Path):
    from avdp_ros.evaluation.sim_eval import run_episode
    from avdp_ros.sim.env import PandaSim, SimConfig

    cfg = EvalConfig(task="push", episodes=1, seed=7, time_limit=2.0, videos=0)
    sim = PandaSim(SimConfig(task="push", episode_time_limit=2.0))
    try:
        info = sim.reset(7)
        ee0, w0, objects0 = sim.ee_pose(), sim.gripper_width(), sim.object_poses()
        expert = make_expert("push")
        expert.act(0.0, ee0, w0, objects0)
        waypoint = expert.plan(0.0, ee0, w0, objects0)[0]  # the expert's first goal
        lab = ExpertLabeller("push", label_lead=0.015)
        res = run_episode(sim, Hold(), 7, cfg, monitor=lab)
    finally:
        sim.close()
    a = lab.arrays()
    assert not res.success and info["task"] == "push"
    assert a["action"].shape == (20, 8) and a["camera"].shape == (20, 128, 128, 3)
    assert np.all(np.diff(a["stamps"]) == 100_000_000)  # one observation per 1/obs_hz of sim time
    lead = np.linalg.norm(a["action"][:, :3] - a["ee_pose"][:, :3], axis=1)
    assert lead.max() <= 0.015 + TICK + 1e-6  # the leash holds ...
    assert lead[-1] > 0.015  # ... and binds: the arm did not follow
    # the label points from the held TCP towards the expert's goal, not anywhere else
    d_label = a["action"][-1, :3] - a["ee_pose"][-1, :3]
    d_goal = waypoint[:3] - a["ee_pose"][-1, :3]
    assert d_label @ d_goal / (np.linalg.norm(d_label) * np.linalg.norm(d_goal)) > 0.95


def test_branch_leaves_the_episode_exactly_as_it_was():
    """A what-if rollout in `PandaSim.branch` does not touch the episode's own physics."""
    from avdp_ros.sim.env import PandaSim, SimConfig

    sim = PandaSim(SimConfig(task="push"))

    def run(branch_at: int | None) -> np.ndarray:
        sim.reset(3)
        start, out = sim.ee_pose(), []
        for k in range(120):
            target = start + np.r_[0.08 * np.sin(0.05 * k), 0.0, -0.1 * min(1.0, k / 60), 0, 0, 0, 0]
            sim.set_target(target)
            sim.set_gripper(0.0)
            sim.step(10)
            if k == branch_at:
                with sim.branch():
                    sim.set_target(target + np.r_[0.05, 0.05, 0, 0, 0, 0, 0])
                    sim.set_gripper(0.08)
                    sim.step(200)
                    moved = sim.ee_pose()
                assert np.linalg.norm(moved[:3] - sim.ee_pose()[:3]) > 0.01  # the branch did move
            out.append(np.r_[sim.ee_pose(), sim.object_poses()["cube"], sim.gripper_width(), sim.time])
        return np.array(out)

    try:
        plain, branched = run(None), run(50)
    finally:
        sim.close()
    assert np.array_equal(plain, branched)


def test_expert_chunks_move_at_the_experts_speed_where_the_policy_does_not(tmp_path: Path):
    """The labeller's own chunk per observation: row 0 is the per-frame label; the rest is where
    the expert, driving from that state, would be, not "2 cm ahead of a robot that holds still"."""
    from avdp_ros.evaluation.sim_eval import run_episode
    from avdp_ros.sim.env import PandaSim, SimConfig

    cfg = EvalConfig(task="push", episodes=1, seed=7, time_limit=1.0, videos=0)
    sim = PandaSim(SimConfig(task="push", episode_time_limit=1.0))
    try:
        lab = ExpertLabeller("push", label_lead=0.02, horizon=8)
        run_episode(sim, Hold(), 7, cfg, monitor=lab)
    finally:
        sim.close()
    a = lab.arrays()
    chunk, frame = a["action_chunk"], a["action"]
    assert chunk.shape == (10, 8, 8) and np.array_equal(chunk[:, 0], frame)
    chunk_speed = np.linalg.norm(np.diff(chunk[:, :, :3], axis=1), axis=2).mean() * 10.0  # m/s
    frame_speed = np.linalg.norm(np.diff(frame[2:, :3], axis=0), axis=1).mean() * 10.0  # after the 1st lead
    assert chunk_speed > 0.2 and frame_speed < 0.01  # the expert streams at 0.25 m/s; the robot held


def test_dagger_cli_writes_a_dataset_training_reads(tmp_path: Path):
    import torch

    from avdp_ros.tools.dagger import main
    from avdp_ros.tools.train import main_baseline, main_tokenizer
    from avdp_ros.train import engine as tu

    ckpt, _ = tiny_idm_checkpoint(tmp_path)
    out = tmp_path / "dagger"
    args = ["--policy", str(ckpt), "--task", "push", "--episodes", "2", "--seed", "6000", "--time-limit", "1.5",
            "--videos", "1", "--threads", "1", "--exec-steps", "2", "--out", str(out), "--no-progress"]
    before = torch.get_num_threads()
    assert main(args) == 0
    ds = EpisodeDataset(out / "dataset", verify_hashes=True)
    assert [e["seed"] for e in ds.episodes] == [6000, 6001]
    assert all(e["has_actions"] and e["success"] is False and e["length"] == 15 for e in ds.episodes)
    ep = ds[0]
    assert ep["meta"]["metadata"]["driver"] == "policy" and ep["meta"]["metadata"]["label_lead_m"] == 0.02
    assert ep["action_chunk"].shape == (15, 4, 8)  # the tiny policy's horizon
    assert np.array_equal(ep["action_chunk"][:, 0], ep["action"])
    lead = np.linalg.norm(ep["action"][:, :3] - ep["ee_pose"][:, :3], axis=1)
    assert lead.max() <= 0.02 + TICK + 1e-6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["label_to_tcp_mm_p50"] <= 25.0 + 1e-3
    assert [e["seed"] for e in summary["per_episode"]] == [6000, 6001]
    assert all(e["goal_distance_m"] > 0.05 and not e["success"] for e in summary["per_episode"])
    assert (out / "rollouts.mp4").stat().st_size > 0
    # a second run into the same folder refuses rather than mixing datasets
    with pytest.raises(SystemExit):
        main(args)
    # the training CLIs take it; its episodes failed, so only with --include-failed
    common = ["--preset", "tiny", "--threads", "1", "--no-progress", "--val-fraction", "0.5"]
    assert main_tokenizer(["--data", str(out / "dataset"), "--out", str(tmp_path / "tok"), "--steps", "2",
                           "--batch-size", "4", *common]) == 0
    tok = str(tmp_path / "tok" / tu.LATEST)
    with pytest.raises(ValueError, match="training set is empty"):
        main_baseline(["--data", str(out / "dataset"), "--out", str(tmp_path / "b0"), "--tokenizer", tok,
                       "--steps", "2", "--batch-size", "4", *common])
    assert main_baseline(["--data", str(out / "dataset"), "--out", str(tmp_path / "b1"), "--tokenizer", tok,
                          "--steps", "2", "--batch-size", "4", "--include-failed", *common]) == 0
    # training windows take the stored expert chunk, not rows t..t+H-1 of the per-frame labels
    from avdp_ros.data.latents import LatentDataset, cache_latents
    from avdp_ros.model.rotation import pose_to_state10
    from avdp_ros.model.tokenizer import Tokenizer

    cache = cache_latents(out / "dataset", Tokenizer.from_checkpoint(tok), progress=False)
    lds = LatentDataset([(out / "dataset", cache)], context_frames=1, future_frames=0, horizon=4, vocab=["<unk>"])
    e0 = lds.index.index((0, 5, 0))
    want = pose_to_state10(ep["action_chunk"][5, :, :7], ep["action_chunk"][5, :, 7])
    np.testing.assert_allclose(lds[e0]["actions"].numpy(), want, atol=1e-6)
    assert not np.allclose(want, pose_to_state10(ep["action"][5:9, :7], ep["action"][5:9, 7]), atol=1e-3)
    torch.set_num_threads(before)


def test_expert_recording_in_process_matches_the_experts_own_run_and_dart_bumps_only_the_execution(tmp_path: Path):
    """`avdp-dagger --policy expert`: the expert drives itself (no resync, no leash), so its episode
    is the one `sim.expert.run_episode` drives; with --perturb the executed path moves off the
    labels' path while every label stays the expert's intended target."""
    from avdp_ros.sim.env import PandaSim, SimConfig
    from avdp_ros.tools.dagger import main

    runs = {}
    for name, extra in (("clean", []), ("dart", ["--perturb", "0.04", "0.2"])):
        out = tmp_path / name
        assert main(["--policy", "expert", "--task", "push", "--episodes", "1", "--seed", "7", "--appearance", "train",
                     "--time-limit", "20", "--videos", "0", "--out", str(out), "--no-progress", *extra]) == 0
        ds = EpisodeDataset(out / "dataset", verify_hashes=True)
        entry, ep = ds.episodes[0], ds[0]
        assert entry["success"] and entry["length"] == len(ep["action"]) > 10 and ep.get("action_chunk") is None
        meta = ep["meta"]["metadata"]
        assert meta["driver"] == ("expert" if name == "clean" else "expert (DART)") and meta["label_lead_m"] == 0.0
        assert meta["appearance"]["name"] == "train"
        runs[name] = ep
    # the clean episode is the expert's own drive of that seed (as sim.expert.run_episode drives it),
    # sampled every observation period: nothing re-synced or leashed it
    sim = PandaSim(SimConfig(task="push", appearance="train"))
    try:
        sim.reset(7)
        expert, poses = make_expert("push"), []
        steps = int(round(1.0 / (50.0 * sim.physics_dt)))
        for tick in range(5 * len(runs["clean"]["ee_pose"])):
            if tick % 5 == 0:
                poses.append(sim.ee_pose())
            pose, width = expert.act(sim.time, sim.ee_pose(), sim.gripper_width(), sim.object_poses())
            sim.set_target(pose)
            sim.set_gripper(width)
            sim.step(steps)
    finally:
        sim.close()
    np.testing.assert_allclose(np.array(poses), runs["clean"]["ee_pose"], atol=1e-5)
    # DART: the first labels agree (start from home) and the executed path then departs from the clean one
    clean, dart = runs["clean"], runs["dart"]
    n = min(len(clean["ee_pose"]), len(dart["ee_pose"]))
    gap = np.linalg.norm(clean["ee_pose"][:n, :3] - dart["ee_pose"][:n, :3], axis=1)
    assert gap.max() > 0.01
    with pytest.raises(SystemExit):  # --perturb without the expert driving is refused
        main(["--policy", "some/ckpt", "--perturb", "0.04", "0.2", "--out", str(tmp_path / "x")])


def test_nominal_pairs_show_the_same_states_in_the_nominal_scene_and_train_an_invariant_encoder(tmp_path: Path):
    """`avdp-dagger --nominal-pairs`: every frame also as the nominal scene shows that state. The
    expert drives the same seed in `train` and `nominal` scenes along the same path (appearance is
    visual, and seed 3 of `train` draws no solid distractor), so the `train` episode's nominal views
    are the nominal episode's frames. Then `avdp-train-tokenizer --target-look nominal` trains only
    the encoder on those pairs, towards a policy's tokenizer's latents, and `avdp-attach-tokenizer`
    gives that policy the new encoder."""
    import torch

    from avdp_ros.model.checkpoint import load_checkpoint
    from avdp_ros.model.tokenizer import Tokenizer, TokenizerConfig
    from avdp_ros.sim.appearance import draw
    from avdp_ros.tools.dagger import main
    from avdp_ros.tools.train import main_tokenizer
    from avdp_ros.train import engine as tu

    assert not any(d.collide for d in draw("train", 3).distractors)
    eps = {}
    for look in ("train", "nominal"):
        out = tmp_path / look
        assert main(["--policy", "expert", "--task", "push", "--episodes", "1", "--seed", "3", "--appearance", look,
                     "--time-limit", "3", "--videos", "0", "--out", str(out), "--no-progress", "--nominal-pairs"]) == 0
        eps[look] = EpisodeDataset(out / "dataset", verify_hashes=True)[0]
    train, nominal = eps["train"], eps["nominal"]
    for cam in ("camera", "wrist"):
        paired = np.load(EpisodeDataset(tmp_path / "train" / "dataset").episode_dir(0) / f"{cam}_nominal.npy")
        assert paired.shape == train[cam].shape and paired.dtype == np.uint8
        np.testing.assert_array_equal(paired, nominal[cam])  # the same states, drawn the nominal way
        assert np.abs(paired.astype(int) - train[cam]).mean() > 5  # while the episode itself looked different

    # the invariant encoder, trained towards the latents of a (tiny, random) policy's tokenizer
    policy, _ = tiny_idm_checkpoint(tmp_path, "policy")
    pstates, pmeta = load_checkpoint(policy)
    ref = Tokenizer(TokenizerConfig.from_dict(pmeta["config"]["tokenizer"]))
    ref.load_state_dict(pstates["tokenizer"])
    common = ["--preset", "tiny", "--threads", "1", "--no-progress", "--val-fraction", "0", "--batch-size", "8",
              "--log-every", "1", "--lr", "3e-3", "--target-look", "nominal"]
    data = [str(tmp_path / "train" / "dataset"), str(tmp_path / "nominal" / "dataset")]
    with pytest.raises(SystemExit):  # it needs the reference whose latents it learns
        main_tokenizer(["--data", *data, "--out", str(tmp_path / "bad"), "--steps", "2", *common])
    out = tmp_path / "inv"
    assert main_tokenizer(["--data", *data, "--out", str(out), "--steps", "40", "--init", str(policy), *common]) == 0
    losses = [h["loss"] for h in json.loads((out / tu.HISTORY_FILE).read_text()) if "loss" in h]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    states, meta = load_checkpoint(out / tu.LATEST, expected_kind="tokenizer")
    assert meta["config"]["latent_scale"] == ref.config.latent_scale  # the reference's, not recalibrated
    assert meta["extra"]["target_look"]["reference_fingerprint"] == ref.fingerprint()
    before = ref.state_dict()
    moved = {k for k, v in states["tokenizer"].items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith(("vae.encoder.", "vae.quant_conv.")) for k in moved)  # decoder frozen
    # resume goes on against the same reference (here drawing wrist pairs twice as often, the latents
    # over the cube and target weighing 5 times the rest); where it moved, --init names its new place
    assert main_tokenizer(["--data", *data, "--out", str(out), "--steps", "42", "--resume", "--camera-weight",
                           "wrist=2", "--object-weight", "4", *common]) == 0
    extra = load_checkpoint(out / tu.LATEST)[1]["extra"]
    assert extra["camera_weight"] == {"wrist": 2} and extra["object_weight"] == 4.0
    for bad in (["--object-weight", "-1"], ["--object-weight", "nan"]):
        with pytest.raises(SystemExit):
            main_tokenizer(["--data", *data, "--out", str(out), "--steps", "43", "--resume", *bad, *common])
    policy.rename(tmp_path / "moved")
    with pytest.raises(SystemExit, match="expected checkpoint.json"):
        main_tokenizer(["--data", *data, "--out", str(out), "--steps", "43", "--resume", *common])
    other = Tokenizer(ref.config)
    other.load_state_dict(ref.state_dict())
    with torch.no_grad():
        next(other.parameters()).add_(0.1)
    other.save(tmp_path / "other")
    with pytest.raises(SystemExit, match="fingerprint differs"):  # another tokenizer at the new place is refused
        main_tokenizer(["--data", *data, "--out", str(out), "--steps", "43", "--resume", "--init",
                        str(tmp_path / "other"), *common])
    assert main_tokenizer(["--data", *data, "--out", str(out), "--steps", "43", "--resume", "--init",
                           str(tmp_path / "moved"), *common]) == 0
    assert load_checkpoint(out / tu.LATEST)[1]["extra"]["target_look"]["reference"] == str(tmp_path / "moved")
    (tmp_path / "moved").rename(policy)

    # the policy reads the new encoder without training: avdp-attach-tokenizer, refused for any other tokenizer
    from avdp_ros.model.policy import Policy
    from avdp_ros.tools.attach_tokenizer import main as attach

    assert attach(["--policy", str(policy), "--tokenizer", str(out / tu.LATEST), "--out", str(tmp_path / "p2")]) == 0
    moved = Policy.from_checkpoint(tmp_path / "p2")
    frame = np.asarray(train["camera"][5:6])
    with torch.no_grad():
        assert torch.equal(moved.tokenizer.encode(frame), Tokenizer.from_checkpoint(out / tu.LATEST).encode(frame))
    # --blend: a point on the line between the policy's own weights and the new ones
    assert attach(["--policy", str(policy), "--tokenizer", str(out / tu.LATEST), "--out", str(tmp_path / "half"),
                   "--blend", "0.5"]) == 0
    half, own = Policy.from_checkpoint(tmp_path / "half").tokenizer.state_dict(), ref.state_dict()
    for k, v in moved.tokenizer.state_dict().items():
        torch.testing.assert_close(half[k], 0.5 * (own[k] + v))
    assert not torch.equal(half["vae.encoder.conv_in.weight"], own["vae.encoder.conv_in.weight"])
    with pytest.raises(SystemExit):
        attach(["--policy", str(policy), "--tokenizer", str(out / tu.LATEST), "--out", str(tmp_path / "p5"),
                "--blend", "0"])
    ref.save(tmp_path / "plain")  # the policy's own tokenizer, not trained --target-look
    with pytest.raises(SystemExit):
        attach(["--policy", str(policy), "--tokenizer", str(tmp_path / "plain"), "--out", str(tmp_path / "p3")])
    with pytest.raises(SystemExit):  # a policy whose tokenizer the encoder did not learn (it already has the new one)
        attach(["--policy", str(tmp_path / "p2"), "--tokenizer", str(out / tu.LATEST), "--out", str(tmp_path / "p4")])
