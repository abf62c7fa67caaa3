"""Per-stage and end-to-end latency of every inference backend available here (a benchmark, not a test).

For each Euler step count s (video steps = action steps = s; with `--action-steps N` the action
head keeps N and s is the video steps alone) it builds every backend's policy
and feeds `--warmup` + `--calls` observations, one `infer` per observation (as a controller
replanning every frame would, batch 1), round-robin over the backends so that load on a shared
machine hits all of them alike. It reports p50 / p99 of the `timings` every backend returns
(tokenizer_ms, video_ms, idm_ms, total_ms). Backends that cannot run here are listed with the
reason and skipped. It also reports the calling thread's CPU time per call: with one intra-op
thread (the default) that is the compute cost, which a loaded machine does not inflate.

    python bench/backend_latency.py --policy models/avdp_default --bundle runs/deploy/avdp_default \\
        --bundle-recompute runs/deploy/avdp_default_recompute --steps 1 2 4 --calls 50 --threads 1 \\
        --out runs/deploy/bench

Backends (CPU): torch eager (`Policy`), torch staged (the exported stage modules in torch),
onnxruntime CPU (KV-cache graphs, and context-recompute graphs with --bundle-recompute).
With a CUDA device also: torch eager fp32 / fp16 / bf16 autocast, torch staged + CUDA graphs
fp32 / fp16, onnxruntime CUDA and TensorRT EPs (if built in), native TensorRT fp16.
Writes <out>/backend_latency.csv and .md.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from avdp_ros.deploy.backends import load_policy

STAGES = ("tokenizer_ms", "video_ms", "idm_ms", "total_ms")


def observations(cfg, n: int, size: int, seed: int = 0) -> list[dict]:
    """Random camera images (the latency does not depend on the content) and a fixed pose."""
    rng = np.random.default_rng(seed)
    pose = np.array([0.45, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0])
    instr = cfg.instructions[-1]
    return [{**{cam: rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for cam in cfg.cameras},
             "ee_pose": pose, "gripper": 0.04, "instruction": instr} for _ in range(n)]


def candidates(a) -> list[tuple[str, str, str, dict]]:
    """(label, backend, path, options) of every configuration worth timing on this machine."""
    cpu = [("torch eager", "torch", a.policy, {}),
           ("torch staged", "torch", a.policy, {"staged": True})]
    if a.bundle:
        cpu.append(("onnxruntime cpu (kv)", "onnxruntime", a.bundle, {"providers": "cpu", "threads": a.threads}))
    if a.bundle_recompute:
        cpu.append(("onnxruntime cpu (recompute)", "onnxruntime", a.bundle_recompute,
                    {"providers": "cpu", "threads": a.threads}))
    if not torch.cuda.is_available():
        return [(label, b, p, o | {"device": "cpu"}) for label, b, p, o in cpu]
    dev = a.cuda_device
    gpu = [("torch eager cuda fp32", "torch", a.policy, {}),
           ("torch eager cuda fp16", "torch", a.policy, {"dtype": "fp16"}),
           ("torch eager cuda bf16", "torch", a.policy, {"dtype": "bf16"}),
           ("torch cuda graphs fp32", "torch", a.policy, {"cuda_graphs": True}),
           ("torch cuda graphs fp16", "torch", a.policy, {"cuda_graphs": True, "dtype": "fp16"})]
    if a.bundle:
        gpu += [("onnxruntime cuda", "onnxruntime", a.bundle, {"providers": "cuda"}),
                ("onnxruntime tensorrt-ep fp16", "onnxruntime", a.bundle, {"providers": "tensorrt,cuda"}),
                ("tensorrt fp16", "tensorrt", a.bundle, {"precision": "fp16"})]
    return [(label, b, p, o | {"device": "cpu"}) for label, b, p, o in cpu] + \
        [(label, b, p, o | {"device": dev}) for label, b, p, o in gpu]


def measure(policies: dict, obs: list[dict], warmup: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Round-robin: each observation goes to every policy in turn, so a load change on a shared
    machine hits every backend alike (the policies see the same observation sequence)."""
    for p in policies.values():
        p.reset()
    rows = {label: [] for label in policies}
    for o in obs:
        for label, p in policies.items():
            c0 = time.thread_time()
            timings = p.infer(o)["timings"]
            # CPU time of this thread: with 1 intra-op thread all the work runs here, so this is
            # the compute cost, unaffected by waiting for the CPU on a loaded machine
            rows[label].append({**timings, "cpu_ms": (time.thread_time() - c0) * 1e3})
    out = {}
    for label, rs in rows.items():
        rs = rs[warmup:]
        out[label] = {k: (float(np.percentile([r[k] for r in rs], 50)), float(np.percentile([r[k] for r in rs], 99)))
                      for k in STAGES + ("cpu_ms",)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="checkpoint directory (torch backends)")
    ap.add_argument("--bundle", default=None, help="bundle exported with the KV-cache graphs (avdp-export)")
    ap.add_argument("--bundle-recompute", default=None, help="bundle exported with --video-mode recompute")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="Euler steps (video = action)")
    ap.add_argument("--action-steps", type=int, default=None,
                    help="keep the action head at this many steps: --steps then sweeps the video steps alone")
    ap.add_argument("--future-t", type=float, default=None,
                    help="flow time a noised-future IDM (--head uwm) reads its future at; 1 = no video rollout")
    ap.add_argument("--calls", type=int, default=50, help="timed infer calls per row (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls first (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and onnxruntime")
    ap.add_argument("--image-size", type=int, default=128, help="camera image side fed in (node default 128)")
    ap.add_argument("--cuda-device", default="cuda:0")
    ap.add_argument("--only", nargs="*", default=None, help="labels to run (substring match)")
    ap.add_argument("--out", type=Path, default=Path("runs/deploy/bench"), help="directory for the CSV and .md")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows, skipped = [], []
    configs = [c for c in candidates(a) if not a.only or any(s in c[0] for s in a.only)]
    for steps in a.steps:
        policies = {}
        for label, backend, path, opts in configs:
            if any(label == s for s, _ in skipped):
                continue
            opts = dict(opts)
            device = opts.pop("device")
            try:
                policies[label] = load_policy(backend, path, device, video_steps=steps,
                                              action_steps=a.action_steps or steps, **opts)
                if a.future_t is not None:
                    policies[label].future_t = a.future_t
            except Exception as err:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
                skipped.append((label, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"))
        if not policies:
            break
        obs = observations(next(iter(policies.values())).cfg, a.warmup + a.calls, a.image_size)
        t0 = time.perf_counter()
        results = measure(policies, obs, a.warmup)
        for label, res in results.items():
            rows.append({"backend": label, "steps": steps, **{f"{k[:-3]}_p50_ms": round(res[k][0], 3)
                                                              for k in STAGES},
                         **{f"{k[:-3]}_p99_ms": round(res[k][1], 3) for k in STAGES},
                         "cpu_p50_ms": round(res["cpu_ms"][0], 3)})
            p50, p99 = res["total_ms"][:2]
            print(f"{label:30s} steps {steps}: total p50 {p50:7.2f} ms  p99 {p99:7.2f} ms", file=sys.stderr)
        print(f"steps {steps}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    sweep = f"{a.action_steps} action steps, steps = video steps" if a.action_steps else "video steps = action steps"
    lines = [f"`{a.policy}`, batch 1, {a.calls} calls per row after {a.warmup} warm-up, {a.threads} CPU thread(s), "
             f"{a.image_size}x{a.image_size} images, "
             + sweep
             + (f", future_t {a.future_t}" if a.future_t is not None else "") + f"; CPU {cpu}, GPU {gpu}, "
             f"torch {torch.__version__}", "",
             "| backend | steps | " + " | ".join(f"{k[:-3]} p50 / p99 (ms)" for k in STAGES)
             + " | CPU time p50 (ms) | speed-up vs torch eager (total p50 / CPU time) |",
             "| --- | --- | " + " | ".join("---" for _ in STAGES) + " | --- | --- |"]
    eager = {(r["steps"], r["backend"].startswith("torch eager cuda")): r for r in rows
             if r["backend"] in ("torch eager", "torch eager cuda fp32")}
    for r in rows:
        ref = eager.get((r["steps"], "cuda" in r["backend"] or "tensorrt" in r["backend"]))
        speed = f"{ref['total_p50_ms'] / r['total_p50_ms']:.2f}x / {ref['cpu_p50_ms'] / r['cpu_p50_ms']:.2f}x" \
            if ref else "-"
        lines.append(f"| {r['backend']} | {r['steps']} | " + " | ".join(
            f"{r[k[:-3] + '_p50_ms']:.2f} / {r[k[:-3] + '_p99_ms']:.2f}" for k in STAGES)
            + f" | {r['cpu_p50_ms']:.2f} | {speed} |")
    if skipped:
        lines += ["", "Not run here:"] + [f"- {label}: {why}" for label, why in skipped]
    table = "\n".join(lines)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "backend_latency.md").write_text(table + "\n")
    if rows:
        with open(a.out / "backend_latency.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
