"""avdp-eval-ros's pure parts without ROS: the metrics of a recorded episode and of a run, the
Markdown report and output files, the camera relay's rules and the config checks, on synthetic
episodes whose numbers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from avdp_ros.evaluation.faults import STALE_OFFSET_S, FaultSpec, relay_action
from avdp_ros.evaluation.report import report_markdown, write_outputs
from avdp_ros.evaluation.ros_config import EvalRosConfig
from avdp_ros.evaluation.ros_metrics import (
    Episode,
    chunk_ages_ms,
    counter_delta,
    episode_metrics,
    in_intervals,
    percentiles,
    running_from,
    speeds,
    summarize,
)

PARAMS = {"workspace_min": [0.2, -0.3, 0.0], "workspace_max": [0.7, 0.3, 0.6], "command_rate_hz": 100.0,
          "max_linear_speed": 0.25, "max_angular_speed": 1.0, "hold_s": 0.2, "torch_threads": 1}
QUAT = [0.0, 0.0, 0.0, 1.0]


def _chunk(t_obs, arrival, plan_end, kept=4, error="", total_ms=150.0) -> dict:
    return {"t_obs": t_obs, "arrival": arrival, "obs_to_chunk_ms": round((arrival - t_obs) * 1e3, 6),
            "total_ms": total_ms, "kept": kept, "dropped": 0, "plan_end": plan_end, "error": error}


def _episode(seed=7, t_start=5.0, success=True, speed=0.1) -> Episode:
    """2 s of 100 Hz commands: held at x = 0.4 until the first chunk arrives (0.5 s after the
    reset), then moving at `speed` m/s along x; two accepted chunks and one refused."""
    rel = np.arange(200) * 0.01
    stamps = t_start + rel
    x = 0.4 + speed * np.clip(rel - 0.5, 0.0, None)
    poses = np.column_stack([x, np.zeros_like(x), np.full_like(x, 0.3), np.tile(QUAT, (rel.size, 1))])
    commands = np.column_stack([stamps + 0.001, stamps, poses])  # arrival, stamp, pose7
    chunks = [_chunk(t_start + 0.3, t_start + 0.5, t_start + 0.9),
              _chunk(t_start + 0.8, t_start + 1.0, t_start + 1.4),
              _chunk(t_start + 1.2, t_start + 1.6, math.nan, kept=0, error="late", total_ms=120.0)]
    return Episode(seed=seed, t_start=t_start, t_end=t_start + 2.0, success=success,
                   duration_s=1.2 if success else 15.0, commands=commands,
                   poses=np.column_stack([stamps, poses]), chunks=chunks,
                   diag_before={"safety.stale": "3", "ingest.ok": "1", "estop": "clear"},
                   diag_after={"safety.stale": "10", "ingest.ok": "1", "chunks_rejected": "1",
                               "estop": "clear"})


def test_percentiles_skip_non_finite_values():
    assert percentiles([1.0, 2.0, 3.0, np.nan, np.inf]) == pytest.approx([2.0, 2.98])
    assert all(math.isnan(v) for v in percentiles([], (50, 95, 99)))


def test_speeds_between_commands():
    stamps = np.array([0.0, 0.1, 0.1, 0.3])  # a repeated stamp: no rate, not an infinite one
    poses = np.tile([0.4, 0.0, 0.3, *QUAT], (4, 1))
    poses[1:, 0] += 0.01
    poses[3, 0] += 0.02
    lin, ang = speeds(stamps, poses)
    assert lin == pytest.approx([0.1, 0.0, 0.1]) and ang == pytest.approx([0.0, 0.0, 0.0])
    assert speeds(stamps[:1], poses[:1])[0].size == 0


def test_chunk_age_counts_only_commands_inside_the_newest_plan():
    chunks = [_chunk(0.3, 0.5, 0.9), _chunk(0.8, 1.0, 1.4), _chunk(1.2, 1.1, 9.0, kept=0, error="late")]
    t = np.array([0.4, 0.5, 0.7, 0.95, 1.0, 1.2, 1.5])
    # 0.4: no chunk yet; 0.95: past the first plan's end, before the second arrived; 1.5: past both
    assert chunk_ages_ms(t, chunks) == pytest.approx([200.0, 400.0, 200.0, 400.0])
    assert chunk_ages_ms(t, chunks[2:]).size == 0  # a refused chunk never executes


def test_in_intervals_is_inclusive():
    mask = in_intervals(np.array([0.0, 1.0, 1.5, 2.0, 3.0]), [(1.0, 2.0)])
    assert mask.tolist() == [False, True, True, True, False]


def test_counter_delta_keeps_risen_counters_only():
    before = {"safety.stale": "3", "ingest.ok": "1", "estop": "clear", "chunks_rejected": "2"}
    after = {"safety.stale": "10", "ingest.ok": "1", "estop": "set", "chunks_rejected": "2",
             "inference_errors": "1", "latency.infer.p50": "120.5"}
    assert counter_delta(before, after) == {"inference_errors": 1, "safety.stale": 7}


def test_episode_metrics_of_a_known_episode():
    ep = _episode()
    assert running_from(ep) == pytest.approx(5.5)
    m = episode_metrics(ep, PARAMS)
    assert m["seed"] == 7 and m["success"] and m["commands"] == 200
    assert (m["chunks"], m["chunks_accepted"], m["chunks_rejected"]) == (3, 2, 1)
    assert m["first_chunk_s"] == pytest.approx(0.5)
    assert m["max_linear_speed"] == pytest.approx(0.1, rel=1e-6) and m["max_angular_speed"] == 0.0
    assert m["inside_workspace"] and m["within_limits"]
    assert m["counters"] == {"chunks_rejected": 1, "safety.stale": 7}
    # periods count from the first chunk on: 1.5 s of 10 ms steps
    assert m["_periods_stamp_ms"] == pytest.approx(np.full(149, 10.0), abs=1e-6)
    # while an inference ran (0.35-0.5 s is before the first chunk; 0.85-1.0 s and 1.48-1.6 s count)
    assert 24 <= m["_periods_infer_ms"].size <= 28
    ages = m["_ages_ms"]
    assert 70 <= ages.size <= 82 and ages.min() >= 200.0 - 1e-6 and ages.max() <= 600.0 + 1e-6
    assert "fault" not in m
    assert not episode_metrics(_episode(speed=0.3), PARAMS)["within_limits"]  # faster than 0.25 m/s


def test_nan_fault_window_is_measured_from_the_refused_chunks():
    ep = _episode()
    ep.fault_window = (ep.t_start + 0.9, ep.t_start + 1.4)  # the wrapper's window, on observation stamps
    ep.chunks = [_chunk(5.3, 5.5, 5.9), _chunk(5.8, 6.0, math.nan, kept=0, error="non-finite x = nan"),
                 _chunk(6.0, 6.2, math.nan, kept=0, error="non-finite x = nan"), _chunk(6.5, 6.7, 7.1)]
    ep.messages = [(5.7, "diagnostics: before the fault"), (6.3, "log: chunk refused: non-finite x = nan"),
                   (8.0, "log: too late to be about the fault")]
    f = episode_metrics(ep, PARAMS)["fault"]
    assert f["window_s"] == [pytest.approx(0.8), pytest.approx(1.5)]  # first NaN obs .. next good obs
    assert f["last_plan_end_s"] == pytest.approx(0.9)
    assert f["messages"] == ["log: chunk refused: non-finite x = nan"]
    assert f["recovered"]  # the arm kept moving after the window


def test_summary_and_report_of_a_run():
    cfg = EvalRosConfig(episodes=2, seed=7, fault=FaultSpec())
    episodes = [_episode(7), _episode(8, t_start=8.0, success=False)]
    final = {"safety.stale": "25", "latency.infer.p50": "120.5", "latency.infer.p99": "180", "latency.n": "4"}
    s = summarize(episodes, cfg, PARAMS, {"safety.stale": "1"}, final, relayed={})
    assert s["episodes"] == 2 and s["success_rate"] == 0.5 and s["failed_seeds"] == [8]
    assert s["mean_duration_s"] == pytest.approx((1.2 + 15.0) / 2)
    # the first chunk of each episode is warm-up: chunks 2 and 3 of both remain
    assert s["infer_calls"] == 4 and s["infer_ms_p50"] == pytest.approx(135.0)
    assert s["chunks"] == 6 and s["chunks_rejected"] == 2 and s["obs_to_chunk_samples"] == 4
    assert s["command_stamp_period_ms_p50"] == pytest.approx(10.0)
    assert s["interventions"] == {"stale": 24} and s["counters"] == {}
    assert s["node_latency_ms"] == {"infer.p50": 120.5, "infer.p99": 180.0}
    assert s["within_limits"] and "relay" not in s and s["via"] == "ros"
    assert [r["seed"] for r in s["results"]] == [7, 8] and not any(k.startswith("_") for k in s["results"][0])
    json.dumps(s)  # summary.json

    text = report_markdown(s)
    assert text.startswith("# avdp-eval-ros: models/avdp_default on push\n")
    assert "| 50% | 8.1 | 8 |" in text and "success held 0.5 s" in text
    assert "box and the limits: **yes**" in text and "stale 24" in text
    assert "| 8 | no | 15.0 | 3 (1) | 0.5 | 0.100 | yes |" in text
    assert "## Fault" not in text


def test_outputs_are_written(tmp_path):
    cfg = EvalRosConfig(episodes=2, seed=7, plot_episodes=2)
    episodes = [_episode(7), _episode(8, t_start=8.0, success=False)]
    s = summarize(episodes, cfg, PARAMS, {}, {}, relayed={})
    write_outputs(tmp_path, s, episodes, cfg)
    assert json.loads((tmp_path / "summary.json").read_text())["success_rate"] == 0.5
    assert (tmp_path / "report.md").read_text() == report_markdown(s)
    for name in ("latency_hist.png", "ee_path.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert not (tmp_path / "rollout.mp4").exists()  # no episode was filmed


def test_relay_rules():
    window = (1.0, 2.0)
    assert relay_action("camera_dropout", 0, 1.5, window) == "drop"
    assert relay_action("camera_dropout", 1, 1.5, window) == "forward"  # only the third-person camera
    assert relay_action("stale_stamps", 1, 1.0, window) == "restamp"
    assert relay_action("stale_stamps", 0, 2.0, window) == "forward"  # the window is half-open
    assert relay_action("stale_stamps", 0, 1.5, None) == "forward"
    assert STALE_OFFSET_S > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"fault": FaultSpec("camera_dropout", 10.0, 6.0)}, "does not end before the time limit"),
    ({"real_time_factor": 0.5}, "needs use_sim_time"),
    ({"episodes": 0}, "episodes 0"),
    ({"settle": -1.0}, "settle -1.0"),
])
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvalRosConfig(**kwargs)


def test_fault_spec_is_validated():
    with pytest.raises(ValueError, match="expected one of none, camera_dropout"):
        FaultSpec("smoke")
    with pytest.raises(ValueError, match="duration 0.0"):
        FaultSpec("nan_actions", 1.0, 0.0)
