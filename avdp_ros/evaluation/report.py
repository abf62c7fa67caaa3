"""avdp-eval-ros's outputs from its summary and episodes: report.md (Markdown tables), summary.json,
latency_hist.png, ee_path.png and rollout.mp4."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from avdp_ros.evaluation.ros_config import EvalRosConfig
from avdp_ros.evaluation.ros_metrics import Episode, running_from


def _fmt(v, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3g}{unit}" if isinstance(v, float) else f"{v}{unit}"


def report_markdown(s: dict) -> str:
    fault = s["fault"]["kind"]
    title = f"# avdp-eval-ros: {s['policy']} on {s['task']}" + (f", fault {fault}" if fault != "none" else "")
    lines = [title, "",
             f"{s['episodes']} episodes, seeds {s['seed']}..{s['seed'] + s['episodes'] - 1}, time limit "
             f"{s['time_limit_s']} s, success held {s['settle_s']} s; nodes as {s['mode']}, "
             f"{'sim time' if s['use_sim_time'] else 'wall time'}, real-time factor "
             f"{s['real_time_factor']}, torch threads {s['torch_threads']}, "
             f"commands at {s['command_rate_hz']} Hz.", "",
             "| success | mean length (s) | failed seeds |", "| --- | --- | --- |",
             f"| {s['success_rate'] * 100:.0f}% | {s['mean_duration_s']:.1f} | "
             f"{', '.join(map(str, s['failed_seeds'][:20])) or '-'} |", "",
             "| latency (ms) | p50 | p95 | p99 | max | n |", "| --- | --- | --- | --- | --- | --- |",
             f"| obs -> chunk (t_obs to chunk in the plan) | {_fmt(s['obs_to_chunk_ms_p50'])} | "
             f"{_fmt(s['obs_to_chunk_ms_p95'])} | {_fmt(s['obs_to_chunk_ms_p99'])} | | "
             f"{s['obs_to_chunk_samples']} |",
             f"| model infer (first per episode excluded) | {_fmt(s['infer_ms_p50'])} | | "
             f"{_fmt(s['infer_ms_p99'])} | | {s['infer_calls']} |",
             f"| command period, arrival at a subscriber | {_fmt(s['command_period_ms_p50'])} | | "
             f"{_fmt(s['command_period_ms_p99'])} | {_fmt(s['command_period_ms_max'])} | |",
             f"| command period, header stamps (commander timer) | "
             f"{_fmt(s['command_stamp_period_ms_p50'])} | | {_fmt(s['command_stamp_period_ms_p99'])} | "
             f"{_fmt(s['command_stamp_period_ms_max'])} | |",
             f"| ... while an inference runs | {_fmt(s['command_period_during_inference_ms_p50'])} | | "
             f"{_fmt(s['command_period_during_inference_ms_p99'])} | "
             f"{_fmt(s['command_period_during_inference_ms_max'])} | "
             f"{s['command_periods_during_inference']} |",
             f"| chunk age at execution (command stamp - t_obs) | {_fmt(s['chunk_age_ms_p50'])} | | "
             f"{_fmt(s['chunk_age_ms_p99'])} | | |", "",
             "Times are on the nodes' clock (" + ("sim time, /clock" if s["use_sim_time"] else "wall time")
             + "), except model infer (wall time) and the arrival periods (wall time at the evaluator). "
             "Periods count from each episode's first chunk; obs -> chunk counts chunks that entered the "
             "plan.", "",
             f"Safety: max commanded speed {s['max_linear_speed']:.3f} m/s, {s['max_angular_speed']:.3f} "
             f"rad/s (limits {s['limits']['max_linear_speed']}, {s['limits']['max_angular_speed']}); inside "
             f"the workspace box and the limits: **{'yes' if s['within_limits'] else 'NO'}**.", "",
             "Safety-filter interventions (commander ticks, whole run): "
             + (", ".join(f"{k} {n}" for k, n in s["interventions"].items()) or "none")
             + ". `stale` = ticks with no plan (each episode start until the first chunk, and faults).", "",
             "Other counters: " + (", ".join(f"{k} {n}" for k, n in s["counters"].items()) or "none") + ".",
             "",
             "| seed | success | length (s) | chunks (rejected) | first chunk (s) | max speed (m/s) "
             "| within limits |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in s["results"]:
        lines.append(f"| {r['seed']} | {'yes' if r['success'] else 'no'} | {r['duration_s']:.1f} | "
                     f"{r['chunks']} ({r['chunks_rejected']}) | {_fmt(r['first_chunk_s'])} | "
                     f"{r['max_linear_speed']:.3f} | {'yes' if r['within_limits'] else 'NO'} |")
    faults = [r for r in s["results"] if "fault" in r]
    if faults:
        lines += ["", f"## Fault: {fault}", "",
                  "| seed | window (s) | max speed 1 s before | hold expected from (s) | held (s) | "
                  "max speed in hold | reaction (s) | max speed in window | resumed after (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in faults:
            f = r["fault"]
            lines.append(f"| {r['seed']} | {f['window_s'][0]:.2f}-{f['window_s'][1]:.2f} | "
                         f"{_fmt(f['max_speed_1s_before'])} | {_fmt(f['hold_expected_from_s'])} | "
                         f"{f['hold_expected_s']:.2f} ({'held' if f['held'] else 'NOT held'}) | "
                         f"{_fmt(f['max_speed_in_hold'])} | "
                         f"{f['reaction_s']:.2f} | {_fmt(f['max_speed_in_window'])} | "
                         f"{_fmt(f['resumed_after_s']) if f['recovered'] else 'never'} |")
        for r in faults:
            lines += ["", f"Seed {r['seed']}: counters that rose: "
                      + (", ".join(f"{k} +{n}" for k, n in r["counters"].items()) or "none") + ".",
                      "Diagnostics / warnings during the fault:", ""]
            lines += [f"- `{m}`" for m in r["fault"]["messages"][:12]] or ["- none"]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, summary: dict, episodes: list[Episode], cfg: EvalRosConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(report_markdown(summary))

    chunks = [c for ep in episodes for c in ep.chunks]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    o2c = [c["obs_to_chunk_ms"] for c in chunks if not c["error"]]
    if o2c:
        ax[0].hist(o2c, bins=40, alpha=0.7, label="obs -> chunk")
        ax[0].hist([c["total_ms"] for c in chunks], bins=40, alpha=0.6, label="model infer")
        for q in (50, 95, 99):
            ax[0].axvline(np.percentile(o2c, q), ls="--", c="k", lw=0.8)
    ax[0].set(xlabel="ms", ylabel="chunks", title="latency per chunk (dashed: obs->chunk p50/p95/p99)")
    ax[0].legend()
    running = [ep.commands[ep.commands[:, 1] >= running_from(ep)] for ep in episodes]
    periods = [np.diff(c[:, 1]) * 1e3 for c in running if len(c) > 1]
    arrivals = [np.diff(c[:, 0]) * 1e3 for c in running if len(c) > 1]
    if periods:
        ax[1].hist(np.concatenate(arrivals), bins=60, alpha=0.6, label="arrival")
        ax[1].hist(np.concatenate(periods), bins=60, alpha=0.6, label="header stamp")
    ax[1].set(xlabel="ms", ylabel="commands", yscale="log",
              title="command period (from each episode's first chunk)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "latency_hist.png", dpi=110)
    plt.close(fig)

    shown = episodes[: max(1, cfg.plot_episodes)]
    fig, ax = plt.subplots(3, len(shown), figsize=(max(8.0, 4.2 * len(shown)), 7), squeeze=False,
                           sharex="col")
    for j, ep in enumerate(shown):
        for k, axis in enumerate("xyz"):
            a = ax[k, j]
            if len(ep.commands):
                a.plot(ep.commands[:, 1] - ep.t_start, ep.commands[:, 2 + k], lw=1.2, label="commanded")
            if len(ep.poses):
                a.plot(ep.poses[:, 0] - ep.t_start, ep.poses[:, 1 + k], lw=1.0, label="achieved")
            for p in ep.plans:
                a.plot(p[:, 0] - ep.t_start, p[:, 1 + k], ".", ms=2, c="gray", alpha=0.4)
            if ep.fault_window is not None:
                a.axvspan(ep.fault_window[0] - ep.t_start, ep.fault_window[1] - ep.t_start, color="r",
                          alpha=0.1)
            a.set_ylabel(f"{axis} (m)")
        ax[0, j].set_title(f"seed {ep.seed} ({'success' if ep.success else 'fail'})")
        ax[2, j].set_xlabel("s since reset")
    ax[0, 0].legend(fontsize=7)
    fig.suptitle("end effector: commanded (target_frame) vs achieved (current_pose); dots: planned waypoints"
                 + ("; red: fault window" if cfg.fault.kind != "none" else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "ee_path.png", dpi=110)
    plt.close(fig)

    frames = []
    for ep in episodes:
        for t, f in ep.frames:
            if ep.fault_window is not None and ep.fault_window[0] <= t < ep.fault_window[1]:
                f = f.copy()
                f[:4] = (255, 0, 0)  # red bar: the fault is on
            frames.append(f)
    if frames:
        import imageio.v2 as imageio

        imageio.mimwrite(out / "rollout.mp4", frames, fps=30, macro_block_size=1)
