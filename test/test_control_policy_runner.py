"""The policy node's control loop (avdp_ros.control.policy_runner) and its parameters
(avdp_ros.control.params) with a fake clock and a fake policy: no rclpy, no model, and no sleeps
but in the tests of the threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from avdp_ros.control.chunks import ChunkConfig, ChunkScheduler, LatencyEstimator
from avdp_ros.control.ingest import IngestConfig, ObservationAssembler
from avdp_ros.control.params import PARAMETERS, PolicyParams
from avdp_ros.control.policy_runner import PolicyRunner
from avdp_ros.control.safety import SafetyFilter, SafetyLimits

T0 = 100.0
DT = 0.125  # 1 / obs_hz; a binary fraction, so stamps compare exactly
H, N = 8, 4  # horizon, execute_steps
FRAME = "panda_link0"
POSE0 = np.array([0.4, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0])
IMAGE = np.zeros((8, 8, 3), np.uint8)


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakePolicy:
    """Chunks moving +1 cm in x per action from the observed pose; each call takes `latency` s of
    the fake clock. `during_infer` runs inside the call (what happens while the model computes)."""

    obs_hz = 1.0 / DT

    def __init__(self, clock: Clock, latency: float = 0.05, supports_prefix: bool = True,
                 frames: bool = False):
        self.clock, self.latency, self.supports_prefix, self.frames = clock, latency, supports_prefix, frames
        self.calls: list[dict] = []
        self.resets = self.observes = 0
        self.during_infer = None

    def reset(self) -> None:
        self.resets += 1

    def observe(self, obs: dict) -> None:
        self.observes += 1

    def infer(self, obs: dict, return_frames: bool = False, prefix=None) -> dict:
        self.calls.append({"t_obs": obs["t_obs"], "prefix": prefix, "return_frames": return_frames})
        if self.during_infer is not None:
            self.during_infer()
        self.clock.t += self.latency
        actions = np.tile(np.concatenate([obs["ee_pose"], [0.04]]), (H, 1))
        actions[:, 0] += 0.01 * np.arange(H)
        out = {"actions": actions, "timings": {"tokenizer_ms": 1.0, "idm_ms": 2.0, "total_ms": 3.5}}
        if self.frames:
            out["predicted_frames"] = np.zeros((2, 2, 4, 4, 3), np.uint8)  # (K, cams, S, S, 3)
        return out


def make(clock: Clock | None = None, **kw):
    """(runner, policy, clock, reports, commands, warnings) over the real pure cores."""
    clock = clock or Clock()
    policy = kw.pop("policy", None) or FakePolicy(clock)
    reports, commands, warnings = [], [], []
    runner = PolicyRunner(
        policy, ObservationAssembler(IngestConfig(cameras={"camera": "/cam"}, image_size=(8, 8))),
        ChunkScheduler(ChunkConfig(horizon=H, execute_steps=N, dt=DT)), SafetyFilter(SafetyLimits()),
        LatencyEstimator(initial=0.3, min_samples=3), clock=clock, on_chunk=reports.append,
        send_command=lambda pose, width, now: commands.append((now, pose, width)), warn=warnings.append, **kw)
    runner.start(thread=False)
    return runner, policy, clock, reports, commands, warnings


def feed(runner: PolicyRunner, t: float, pose=POSE0) -> None:
    """Every stream sampled at t, arriving at once."""
    runner.assembler.add_image("camera", t, IMAGE, t)
    assert runner.add_pose(t, pose, FRAME, t) is None
    assert runner.add_gripper(t, 0.04, t) is None


def tick(runner: PolicyRunner, clock: Clock) -> str | None:
    feed(runner, clock.t)
    return runner.on_obs_tick(clock.t)


def command_until(runner: PolicyRunner, clock: Clock, t_end: float, step: float = 0.01) -> None:
    while clock.t < t_end:
        clock.t = round(clock.t + step, 9)
        runner.on_command_tick(clock.t)


# ---- observation -> inference -> plan ----


def test_first_observation_infers_and_the_chunk_becomes_the_plan():
    runner, policy, clock, reports, _, _ = make(plan_waypoints=True)
    assert tick(runner, clock) == "infer" and runner.scheduler.inference_in_flight
    assert runner.work_once(timeout=0) == "infer"
    assert not runner.scheduler.inference_in_flight
    (r,) = reports
    assert (r.t_obs, r.arrival, r.error) == (T0, T0 + 0.05, "")
    assert (r.kept, r.dropped) == (H - 1, 1)  # action 0 was due at t_obs, before the chunk arrived
    assert r.plan_end == pytest.approx(T0 + (H - 1) * DT)
    assert r.waypoints is not None and r.waypoints[0][-1] == r.plan_end
    assert r.values()["kept"] == "7" and r.values()["total_ms"] == "3.500"
    assert policy.calls[0]["prefix"] is None  # no plan yet: nothing is committed
    assert runner.counters["inferences"] == 1 and runner.work_once(timeout=0) is None


def test_observations_between_inferences_only_extend_the_frame_history():
    runner, policy, clock, _, _, _ = make()
    tick(runner, clock)
    runner.work_once(timeout=0)
    clock.t = T0 + DT  # T0 + 0.125 + 0.3 + 0.05 < switch T0 + 4 * DT: too early for the next chunk
    assert tick(runner, clock) == "observe"
    assert runner.work_once(timeout=0) == "observe"
    assert policy.observes == 1 and runner.counters["observes"] == 1
    clock.t = T0 + 2 * DT
    assert tick(runner, clock) == "infer"


def test_a_chunk_that_arrives_after_all_its_actions_were_due_is_dropped():
    clock = Clock()
    runner, policy, clock, reports, _, warnings = make(clock, policy=FakePolicy(clock, latency=H * DT + 0.1))
    tick(runner, clock)
    runner.work_once(timeout=0)
    (r,) = reports
    assert (r.kept, r.dropped, r.error) == (0, H, "") and r.plan_end is None
    assert runner.scheduler.chunks_added == 0 and runner.scheduler.actions_dropped == H
    assert any("s late: every action was already due" in w for w in warnings)
    assert runner.counters["chunks_rejected"] == 0 and not runner.scheduler.inference_in_flight


def test_an_episode_reset_during_inference_discards_its_chunk():
    runner, policy, clock, reports, _, warnings = make()
    tick(runner, clock)
    policy.during_infer = lambda: runner.new_episode(clock.t)  # the sim resets while the model computes
    assert runner.work_once(timeout=0) == "infer"
    (r,) = reports
    assert "is from before the latest episode reset" in r.error and r.kept == 0
    assert runner.scheduler.chunks_added == 0 and runner.scheduler.plan_end() is None
    assert runner.counters["chunks_rejected"] == 1 and any("chunk rejected" in w for w in warnings)
    assert not runner.scheduler.inference_in_flight
    resets = policy.resets
    assert runner.work_once(timeout=0) == "reset" and policy.resets == resets + 1  # a fresh frame history


def test_an_episode_reset_drops_queued_observations_and_waits_for_a_new_pose():
    runner, policy, clock, _, commands, _ = make()
    tick(runner, clock)
    runner.work_once(timeout=0)
    command_until(runner, clock, T0 + 0.1)
    assert commands
    clock.t = T0 + 2 * DT
    assert tick(runner, clock) == "infer"
    assert runner.on_episode_info({"episode": 1, "instruction": "push"}) is True  # the first one: no reset
    assert runner.instruction == "push"
    assert runner.on_episode_info({"episode": 2, "stamp": clock.t + 0.01}) is True
    assert not runner.scheduler.inference_in_flight  # the queued inference will never run
    assert runner.work_once(timeout=0) == "reset" and runner.work_once(timeout=0) is None
    assert policy.calls[-1]["t_obs"] == T0  # the old episode's queued observation never reached the model
    n = len(commands)
    runner.on_command_tick(clock.t)  # the latest pose is from before the reset: no command
    feed(runner, clock.t + 0.02)
    clock.t += 0.02
    assert runner.on_command_tick(clock.t) is not None and len(commands) == n + 1


def test_a_fixed_instruction_is_not_overridden_by_the_episode_info():
    runner, *_ = make(instruction="pick the cube")
    runner.on_episode_info({"episode": 1, "instruction": "push"})
    assert runner.instruction == "pick the cube"


def test_prefix_conditioning_passes_the_committed_actions():
    runner, policy, clock, _, _, _ = make()
    tick(runner, clock)
    runner.work_once(timeout=0)
    clock.t = T0 + 2 * DT
    assert tick(runner, clock) == "infer"
    expected = runner.scheduler.committed(clock.t, clock.t + runner.latency.estimate())
    assert expected is not None and expected.shape == (3, 8)  # due at t_obs + 0, 1, 2 dt < landing at +0.3 s
    runner.work_once(timeout=0)
    np.testing.assert_array_equal(policy.calls[-1]["prefix"], expected)
    assert runner.counters["prefixed_chunks"] == 1


@pytest.mark.parametrize("kwargs, supports", [({"prefix_conditioning": False}, True), ({}, False)])
def test_no_prefix_when_disabled_or_unsupported(kwargs, supports):
    clock = Clock()
    runner, policy, clock, _, _, _ = make(clock, policy=FakePolicy(clock, supports_prefix=supports), **kwargs)
    tick(runner, clock)
    runner.work_once(timeout=0)
    clock.t = T0 + 2 * DT
    tick(runner, clock)
    runner.work_once(timeout=0)
    assert [c["prefix"] for c in policy.calls] == [None, None] and runner.counters["prefixed_chunks"] == 0


def test_predicted_frames_are_reported_side_by_side():
    clock = Clock()
    runner, policy, clock, reports, _, _ = make(clock, policy=FakePolicy(clock, frames=True),
                                                predicted_frames=True)
    tick(runner, clock)
    runner.work_once(timeout=0)
    image, stamp = reports[0].predicted
    assert image.shape == (4, 8, 3) and stamp == T0 + DT and policy.calls[0]["return_frames"] is True


def test_a_failing_model_call_is_counted_and_frees_the_scheduler():
    errors = []
    runner, policy, clock, reports, _, _ = make(error=errors.append)
    policy.during_infer = lambda: 1 / 0
    tick(runner, clock)
    assert runner.work_once(timeout=0) == "infer"
    assert runner.counters["inference_errors"] == 1 and "ZeroDivisionError" in errors[0]
    assert not runner.scheduler.inference_in_flight and not reports


def test_a_full_queue_skips_the_observation():
    runner, _, clock, _, _, warnings = make()
    tick(runner, clock)
    clock.t += DT
    tick(runner, clock)  # the worker has not taken the first yet: two queued
    clock.t += DT
    assert tick(runner, clock) is None
    assert runner.counters["inference_overruns"] == 1
    assert any("inference thread behind" in w for w in warnings)


def test_missing_streams_block_inference_and_are_reported():
    runner, _, clock, _, _, warnings = make()
    assert runner.on_obs_tick(clock.t) is None
    assert runner.counters["no_observation"] == 1 and "no message yet" in runner.last_not_ready
    assert runner.status() == ("WARN", f"no observation: {runner.last_not_ready}")
    assert runner.add_pose(T0, POSE0, "world", T0) is not None  # wrong frame: rejected and warned
    assert any(w.startswith("rejected ee pose:") for w in warnings)
    assert runner.add_image("camera", 1.0, object(), 0.0) is None  # sim time not started: ignored


def test_the_inference_thread_runs_until_stopped():
    clock = Clock()
    runner, policy, clock, reports, _, _ = make(clock)
    done = threading.Event()
    policy.during_infer = done.set
    runner.start(thread=True)
    try:
        tick(runner, clock)
        assert done.wait(10.0), "the inference thread never called the model"
    finally:
        runner.stop()
    assert runner.worker is None


# ---- commander and e-stop ----


def commander_thread(runner: PolicyRunner, clock: Clock, send, hz: float = 200.0) -> None:
    """Start the runner's commander thread with `send`, then give it a pose to start from."""
    runner._send = send
    runner.start(thread=False, command_hz=hz)
    feed(runner, clock.t)


@pytest.mark.parametrize("allowed", [True, False])
def test_the_commander_thread_sends_until_stopped(monkeypatch, allowed):
    def sched_setscheduler(pid, policy, param):
        assert pid == 0 and policy == os.SCHED_FIFO and param.sched_priority == 40  # this thread only
        if not allowed:
            raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", sched_setscheduler)
    runner, _, clock, _, commands, warnings = make()
    five = threading.Event()
    runner._send = lambda pose, width, now: commands.append(now) or len(commands) >= 5 and five.set()
    runner.start(thread=False, command_hz=200.0, command_priority=40)
    feed(runner, clock.t)
    thread = runner.commander
    try:
        assert five.wait(10.0), "the commander thread sent fewer than 5 commands in 10 s"
    finally:
        runner.stop()
    assert runner.commander is None and runner.worker is None
    n = len(commands)
    assert not thread.is_alive()  # joined: stopped means silent, nothing can send any more
    assert len(commands) == n
    assert all(now == clock.t for now in commands)  # `now` is the caller's clock
    scheduling = dict(runner.diagnostics())["commander.scheduling"]
    if allowed:
        assert scheduling == "SCHED_FIFO 40" and not any("priority" in w for w in warnings)
    else:
        assert scheduling.startswith("normal (SCHED_FIFO 40 refused")
        assert any("real-time priority 40 refused" in w and "rtprio" in w for w in warnings)


def test_the_commander_thread_survives_a_failing_and_a_slow_step():
    runner, _, clock, _, commands, _ = make()
    errors, calls, ten = [], [], threading.Event()
    runner._error = errors.append

    def send(pose, width, now):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("publisher gone")
        if len(calls) == 2:
            time.sleep(0.1)  # the slow step itself (ten periods), not a wait: skipped, not sent as a burst
        if len(calls) >= 10:
            ten.set()

    commander_thread(runner, clock, send, hz=100.0)
    try:
        assert ten.wait(10.0), "the commander thread stopped after a failing step"
    finally:
        runner.stop()
    assert runner.counters["command_errors"] == 1 and "publisher gone" in errors[0]
    assert runner.counters["command_overruns"] >= 1


def test_the_commander_starts_from_the_measured_pose_and_follows_the_plan():
    runner, _, clock, _, commands, warnings = make()
    assert runner.on_command_tick(clock.t) is None  # no pose yet
    assert any("waiting for the ee pose" in w for w in warnings)
    tick(runner, clock)
    pose, width = runner.on_command_tick(clock.t)
    np.testing.assert_allclose(pose, POSE0)
    assert width == pytest.approx(0.04)
    runner.work_once(timeout=0)
    command_until(runner, clock, T0 + 0.5)
    assert commands[-1][1][0] > POSE0[0] + 1e-3  # moved along +x
    assert runner.status() == ("OK", "running")


def test_the_estop_holds_until_cleared_and_resumes_from_a_fresh_plan():
    runner, _, clock, _, commands, _ = make()
    tick(runner, clock)
    runner.work_once(timeout=0)
    command_until(runner, clock, T0 + 0.2)
    assert runner.estop("test") is True and runner.estop("again") is False
    assert runner.status()[0] == "ERROR" and "E-STOP latched" in runner.status()[1]
    n = len(commands)
    command_until(runner, clock, T0 + 0.6)
    held = [pose for _, pose, _ in commands[n - 1:]]
    assert len(held) > 10 and all(np.array_equal(p, held[0]) for p in held)
    assert runner.clear_estop() is True and runner.clear_estop() is False
    assert runner.scheduler.plan_end() is None  # the old plan was made for the world before the stop
    clock.t += 0.01
    pose, _ = runner.on_command_tick(clock.t)
    np.testing.assert_array_equal(pose, held[0])  # no plan: still holding
    assert runner.diagnostics()[-2] == ("estop", "clear")


def test_diagnostics_name_every_quantity():
    runner, _, clock, _, _, _ = make()
    tick(runner, clock)
    runner.work_once(timeout=0)
    command_until(runner, clock, T0 + 0.3)
    values = dict(runner.diagnostics())
    for key in ("latency.tokenizer_ms.p50", "latency.idm_ms.p99", "latency.infer_total_ms.p90",
                "latency.ingest_ms.p50", "latency.obs_to_chunk_ms.p99", "latency.chunk_age_ms.p50",
                "latency.command_period_ms.p50", "latency.estimate_ms", "safety.speed", "safety.last_reason",
                "inferences", "observes", "chunks_rejected", "inference_errors", "inference_overruns",
                "no_observation", "prefixed_chunks", "chunks_added", "actions_dropped", "estop",
                "observation"):
        assert key in values, key
    assert "latency.video_ms.p50" not in values  # no samples (the fake reports no video stage)
    assert values["latency.obs_to_chunk_ms.p50"] == "50.00" and values["latency.estimate_ms"] == "300.0"
    assert (values["chunks_added"], values["estop"], values["observation"]) == ("1", "clear", "ok")


# ---- parameters ----


def defaults() -> dict:
    return {name: default for name, (default, _) in PARAMETERS.items() if name != "autostart"}


def test_the_parameter_defaults_are_valid():
    p = PolicyParams.from_values(defaults())
    assert p.expect_image_size is None and p.camera_topics == PARAMETERS["camera_topics"][0]
    assert p.command_rate_hz == 200.0 and isinstance(p.execute_steps, int)


@pytest.mark.parametrize("changes, message", [
    ({"backend": "onnx"}, "backend 'onnx': expected one of torch, onnxruntime, tensorrt"),
    ({"command_rate_hz": 5000.0}, r"command_rate_hz = 5000.0: expected a finite number in \[1.0, 1000.0\]"),
    ({"blend": "cubic"}, "parameter blend = 'cubic': expected one of none, linear"),
    ({"commander": "process"}, "parameter commander = 'process': expected one of thread, timer"),
    ({"execute_steps": 2.5}, "parameter execute_steps = 2.5: expected an integer"),
    ({"max_linear_speed": 0}, r"parameter max_linear_speed = 0: expected a finite number > 0.0"),
    ({"publish_plan": 1}, "parameter publish_plan = 1: expected true or false"),
    ({"image_size": [128]}, r"parameter image_size = \[128\]: expected 2 integers"),
    ({"camera_topics": "/cam"}, "parameter camera_topics = '/cam': expected a list of image topic names"),
    ({"base_frame": ""}, "parameter base_frame is empty"),
    ({"max_command_gap_s": 0.004}, "max_command_gap_s = 0.004: expected more than one command period"),
])
def test_bad_parameters_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        PolicyParams.from_values({**defaults(), **changes})


def test_threads_reach_the_onnxruntime_sessions():
    """torch_threads bounds onnxruntime too: its default (every core) made the video policy's
    inference 1.6x slower beside the sim on a 2-core machine."""
    assert PolicyParams.from_values({**defaults(), "backend": "onnxruntime", "torch_threads": 1}).backend_options() \
        == {"threads": 1}
    assert PolicyParams.from_values({**defaults(), "backend": "onnxruntime"}).backend_options() == {}
    assert PolicyParams.from_values({**defaults(), "torch_threads": 1}).backend_options() == {}  # torch: process-wide


def test_integers_are_accepted_for_numbers():
    assert PolicyParams.from_values({**defaults(), "max_linear_speed": 1}).max_linear_speed == 1.0


def test_cores_check_the_parameters_against_the_model():
    model = SimpleNamespace(cfg=SimpleNamespace(horizon=4, cameras=("camera", "wrist")), obs_hz=10.0)
    p = PolicyParams.from_values(defaults())
    cores = p.cores(model, "m", "/pose", "/gripper")
    assert cores.chunks.horizon == 4 and cores.chunks.dt == pytest.approx(0.1)
    assert cores.ingest.cameras == dict(zip(("camera", "wrist"), p.camera_topics))
    assert cores.limits.max_dt == p.max_command_gap_s and cores.latency.estimate() == p.latency_initial_s
    with pytest.raises(ValueError, match="parameter execute_steps 5 > horizon 4 of the model m"):
        PolicyParams.from_values({**defaults(), "execute_steps": 5}).cores(model, "m", "/pose", "/gripper")
    with pytest.raises(ValueError, match="expected one topic per model camera"):
        PolicyParams.from_values({**defaults(), "camera_topics": ["/a"]}).cores(model, "m", "/p", "/g")
    with pytest.raises(ValueError, match="^parameters: "):
        PolicyParams.from_values({**defaults(), "workspace_min": [1, 1, 1]}).cores(model, "m", "/p", "/g")
    runner = PolicyRunner.build(FakePolicy(Clock()), cores, p, clock=Clock())
    assert runner.prefix_conditioning and runner.plan_waypoints and not runner.predicted_frames


def test_runner_and_params_do_not_import_ros():
    code = ("import sys, avdp_ros.control.policy_runner, avdp_ros.control.params; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'torch', 'onnxruntime')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
