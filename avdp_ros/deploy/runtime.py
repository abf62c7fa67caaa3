"""`StagedPolicy`: the `Policy` interface (`infer`, `observe`, `reset`, `obs_hz`, `cfg`, `kind`)
driven stage by stage over any `Runner` (onnxruntime sessions, TensorRT engines, torch stage
modules with CUDA graphs).

The control flow is `Policy.infer`'s, step for step: tokenizer -> clean pass over the context
(KV cache) -> for each of K frames, `video_steps` Euler steps then a clean pass that appends the
frame to the cache -> IDM encoder -> `action_steps` Euler steps -> unnormalise -> pose. Fixed
noise therefore gives the torch result up to float rounding (test/test_deploy.py, docs/deployment.md).

Arrays stay in the runner's native type between stages (numpy for onnxruntime, device tensors
for torch and TensorRT), so a GPU runner keeps the KV cache and the samples on the device;
pre/post-processing (resize, pose <-> 6D, normalisers) is numpy on the host (`npops`).
This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from avdp_ros.deploy import npops
from avdp_ros.deploy.bundle import Bundle, Spec
from avdp_ros.model.config import ACTION_DIM, PolicyConfig
from avdp_ros.model.kinds import kind_spec
from avdp_ros.validation import check_observation

MASKED = -1.0e4  # = stages.MASKED (kept here so this module stays torch-free)


class Runner(Protocol):
    """Runs one stage: `run(stage, {input name: array}) -> {output name: array}`.

    Outputs may be buffers the runner reuses on its next call of the same stage; the driver
    copies what it keeps. Array helpers make the driver independent of numpy vs torch.
    """

    def run(self, stage: str, feeds: dict[str, Any]) -> dict[str, Any]: ...
    def asarray(self, x: np.ndarray) -> Any: ...
    def numpy(self, x: Any) -> np.ndarray: ...
    def zeros(self, shape: tuple[int, ...]) -> Any: ...
    def cat(self, xs: list, axis: int) -> Any: ...
    def copy(self, x: Any) -> Any: ...
    def sync(self) -> None: ...


class NumpyArrays:
    """Array helpers of host runners (onnxruntime)."""

    def asarray(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x)

    def numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, np.float32)

    def cat(self, xs: list, axis: int) -> np.ndarray:
        return np.concatenate(xs, axis=axis)

    def copy(self, x: np.ndarray) -> np.ndarray:
        return np.array(x, copy=True)

    def sync(self) -> None:
        pass


@dataclass
class PolicyMeta:
    """What the driver needs besides the runner: config, normalisers, which video graphs exist
    and their I/O specs. From a bundle's manifest (`from_bundle`) or a torch policy."""

    cfg: PolicyConfig
    kind: str
    video_mode: str | None
    norms: dict[str, tuple[np.ndarray, np.ndarray]]
    specs: dict[str, tuple[list[Spec], list[Spec]]] = field(default_factory=dict)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> PolicyMeta:
        m = bundle.manifest
        norms = {name: bundle.normalizer(name) for name in m["normalizers"]}
        specs = {s: (bundle.inputs(s), bundle.outputs(s)) for s in bundle.stages}
        return cls(PolicyConfig.from_dict(m["config"]), bundle.kind, bundle.video_mode, norms, specs)


def _noise(noise: dict | None, key: str, shape: tuple[int, ...], rng: np.random.Generator,
           scale: float = 1.0) -> np.ndarray:
    """Injected noise (torch tensor or numpy, as `Policy.infer` takes it) or a fresh draw times `scale`."""
    if noise is None or noise.get(key) is None:
        return scale * rng.standard_normal(shape, dtype=np.float32)
    x = noise[key]
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if tuple(x.shape) != shape:
        raise ValueError(f"noise['{key}'] of shape {tuple(x.shape)}, expected {shape}")
    return np.ascontiguousarray(x, np.float32)


class StagedPolicy:
    """A policy run stage by stage through `runner` (same interface and outputs as `Policy`).

    Args:
        meta: config, normalisers and stage specs (`PolicyMeta.from_bundle`).
        runner: executes the stages.
        video_steps, action_steps: Euler steps (default: the config's).
        seed: seed of the noise drawn when `infer` is given none.
        backend: a label for logs (e.g. "onnxruntime[CPUExecutionProvider]").
    """

    def __init__(self, meta: PolicyMeta, runner: Runner, video_steps: int | None = None,
                 action_steps: int | None = None, seed: int | None = None, backend: str = ""):
        self.meta = meta
        self.cfg = meta.cfg
        self.runner = runner
        self.backend = backend
        self.video_steps = video_steps or self.cfg.video_steps
        self.action_steps = action_steps or self.cfg.action_steps
        self.action_temperature = self.cfg.action_temperature  # scale of drawn (not injected) action noise
        self.future_t = self.cfg.idm.future_t  # flow time a noised-future IDM reads its future at
        self._video_grid = npops.euler_grid(self.video_steps)
        self._action_grid = npops.euler_grid(self.action_steps)
        self._rng = np.random.default_rng(seed)
        self._frames: deque[tuple[Any, np.ndarray]] = deque(maxlen=self.cfg.context_frames)
        self._image_size = int(self.cfg.tokenizer["image_size"])
        self._crops = dict(self.cfg.tokenizer.get("crops", {}))  # camera -> region of interest fractions
        C, h, w = self.cfg.latent_shape
        self._frame_shape = (self.cfg.n_cameras, C, h, w)
        self._T = self.cfg.n_cameras * (h // self.cfg.video.patch_size) * (w // self.cfg.video.patch_size)

    @property
    def obs_hz(self) -> float:
        return self.cfg.obs_hz

    @property
    def kind(self) -> str:
        return self.meta.kind

    def reset(self) -> None:
        """Forget the frame history (call at the start of every episode)."""
        self._frames.clear()

    def observe(self, obs: dict) -> float:
        """Encode and append one observation to the history; returns the tokenizer time (ms)."""
        check_observation(obs, self.cfg.cameras)
        t0 = time.perf_counter()
        images = np.concatenate([npops.images_to_float(obs[cam][None], self._image_size, self._crops.get(cam))
                                 for cam in self.cfg.cameras])  # (cams, 3, S, S)
        latents = self.runner.run("encoder", {"images": self.runner.asarray(images)})["latents"]
        latents = self.runner.copy(latents)  # (cams, C, h, w); the runner may reuse its output buffer
        state = npops.pose_to_state10(np.asarray(obs["ee_pose"], np.float32), float(obs["gripper"]))
        if not self._frames:  # episode start: pad the history with the first frame, as in training
            for _ in range(self.cfg.context_frames - 1):
                self._frames.append((latents, state))
        self._frames.append((latents, state))
        self.runner.sync()
        return (time.perf_counter() - t0) * 1e3

    # ---- stages ---------------------------------------------------------------------------

    def _euler(self, stage: str, x, grid: np.ndarray, feeds: dict, name: str = "x",
               known: np.ndarray | None = None, noise: np.ndarray | None = None):
        """x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i), as `flow.euler_sample`.

        known: (1, P, ...) leading rows along axis 1 to inpaint, with `noise` the starting noise:
        before every step those rows are set to (1 - t) known + t noise, at the end to `known`.
        """
        r = self.runner
        P = 0 if known is None else known.shape[1]
        if P:
            x = r.copy(x)  # rows are overwritten in place below
        for i in range(len(grid) - 1):
            if P:
                t = grid[i]
                x[:, :P] = r.asarray((np.float32(1.0) - t) * known + t * noise[:, :P])
            feeds[name] = x
            feeds["t"] = r.asarray(grid[i:i + 1])
            v = r.run(stage, feeds)["velocity"]
            x = x + float(grid[i + 1] - grid[i]) * v
        if P:
            x[:, :P] = r.asarray(known)
        return x

    def _prefix(self, prefix: np.ndarray, state: np.ndarray) -> np.ndarray:
        """(P, 8) robot-unit actions -> (1, P, 10) in the head's normalised space (`Policy._prefix`)."""
        p = np.asarray(prefix, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 8 or not 0 < len(p) < self.cfg.horizon or not np.all(np.isfinite(p)):
            raise ValueError(f"prefix: {p.shape} array, expected (P, 8) finite actions (pose7 + width) "
                             f"with 0 < P < horizon {self.cfg.horizon}")
        p = p.astype(np.float32)
        absolute = np.concatenate([npops.pose7_to_pose9(p[:, :7]), p[:, 7:8]], axis=-1)[None]  # (1, P, 10)
        if self.cfg.relative_actions:
            absolute = npops.actions_to_relative(absolute, state)
        mean, std = self.meta.norms["action"]
        return ((absolute - mean) / std).astype(np.float32)

    def _rollout_kv(self, context, instr, vstate, noise: np.ndarray):
        r, cfg, T = self.runner, self.cfg, self._T
        Fc, K = cfg.context_frames, cfg.future_frames
        out = r.run("video_context", {"context": context, "instr": instr, "state": r.asarray(vstate)})
        spec = {s.name: s for s in self.meta.specs["video_frame"][0]}
        cache_k, cache_v = r.zeros(spec["past_k"].shape), r.zeros(spec["past_v"].shape)  # (nL, 1, nh, Lmax, hs)
        cache_k[..., :Fc * T, :] = out["past_k"]
        cache_v[..., :Fc * T, :] = out["past_v"]
        bias = np.full(spec["past_bias"].shape, MASKED, np.float32)
        bias[:Fc * T] = 0.0
        features, preds = [r.copy(out["features"])], []
        for j in range(K):
            index = Fc + j
            feeds = {"instr": instr, "frame": r.asarray(np.array([index], np.int64)), "past_k": cache_k,
                     "past_v": cache_v, "past_bias": r.asarray(bias)}
            x = self._euler("video_frame", r.asarray(noise[:, j]), self._video_grid, feeds)  # (1, cams, C, h, w)
            feeds.update(x=x, t=r.asarray(np.zeros(1, np.float32)))
            clean = r.run("video_frame", feeds)  # the clean frame's keys/values and feature
            features.append(r.copy(clean["feature"]))
            if j < K - 1:  # the last frame's keys are never attended to
                cache_k[..., index * T:(index + 1) * T, :] = clean["k"]
                cache_v[..., index * T:(index + 1) * T, :] = clean["v"]
                bias[index * T:(index + 1) * T] = 0.0
            preds.append(x[:, None])
        return r.cat(preds, 1), r.cat(features, 1)  # (1, K, cams, C, h, w), (1, Fc + K, D)

    def _rollout_recompute(self, context, instr, vstate, noise: np.ndarray):
        r, cfg = self.runner, self.cfg
        Fc, K = cfg.context_frames, cfg.future_frames
        frames = r.zeros((1, Fc + K) + self._frame_shape)
        frames[:, :Fc] = context
        t = np.ones((1, Fc + K), np.float32)  # slots after the current frame: unseen (causal)
        t[:, :Fc] = 0.0
        feeds = {"frames": frames, "instr": instr, "state": r.asarray(vstate)}
        for j in range(K):
            index = Fc + j
            x = r.asarray(noise[:, j])
            for i in range(self.video_steps):
                frames[:, index] = x
                t[0, index] = self._video_grid[i]
                feeds["t"] = r.asarray(t)
                v = r.run("video_sequence", feeds)["velocity"][:, index]
                x = x + float(self._video_grid[i + 1] - self._video_grid[i]) * v
            frames[:, index] = x
            t[0, index] = 0.0
        feeds["t"] = r.asarray(t)  # every frame clean: the features the IDM sees
        features = r.copy(r.run("video_sequence", feeds)["features"])
        return r.copy(frames[:, Fc:]), features

    supports_prefix = True  # infer(prefix=...) inpaints committed actions, as Policy does

    def infer(self, obs: dict, noise: dict | None = None, return_frames: bool = False,
              prefix: np.ndarray | None = None) -> dict:
        """Plan an action chunk for `obs`; same arguments, keys and shapes as `Policy.infer`
        (`prefix`: (P, 8) committed actions the chunk starts with, real-time chunking)."""
        r, cfg = self.runner, self.cfg
        t_start = time.perf_counter()
        tok_ms = self.observe(obs)
        context = r.cat([f[None] for f, _ in self._frames], 0)[None]  # (1, Fc, cams, C, h, w)
        states = np.stack([s for _, s in self._frames])[None]  # (1, Fc, 10) raw
        instr = r.asarray(np.array([cfg.instruction_index(str(obs.get("instruction", "")))], np.int64))
        timings = {"tokenizer_ms": tok_ms, "video_ms": 0.0}
        pred = feats = future = tokens = None
        noised = cfg.idm.future_noise == "independent"
        reads_tokens = cfg.idm.future_input == "tokens"
        if kind_spec(self.kind).has_video:
            t0 = time.perf_counter()
            shape = (1, cfg.future_frames) + self._frame_shape
            mean, std = self.meta.norms["video_state"]
            vstate = ((states - mean) / std).astype(np.float32)
            rollout = self._rollout_kv if self.meta.video_mode == "kv" else self._rollout_recompute
            if reads_tokens:  # one pass over the context and pure-noise slots (Policy.infer)
                vnoise = _noise(noise, "video", shape, self._rng)
                tokens = r.copy(r.run("video_tokens", {"context": context, "instr": instr, "state": r.asarray(vstate),
                                                       "noise": r.asarray(vnoise)})["tokens"])
                if return_frames:  # the frames only to show them
                    pred, _ = rollout(context, instr, vstate, vnoise)
            elif noised and self.future_t >= 1.0:  # the future is pure noise: no rollout (Policy._future)
                pred = r.asarray(_noise(noise, "future", shape, self._rng))
            else:
                vnoise = _noise(noise, "video", shape, self._rng)
                pred, feats = rollout(context, instr, vstate, vnoise)
            future = None if reads_tokens else pred
            if noised:  # the IDM reads (1 - t) prediction + t noise (InverseDynamics.noise_future)
                t = float(self.future_t)
                future = pred * (1.0 - t) + r.asarray(_noise(noise, "future", shape, self._rng)) * t
            r.sync()
            timings["video_ms"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        mean, std = self.meta.norms["state"]
        last = states[:, -1]  # (1, 10) raw state the chunk is planned from
        P = cfg.idm.past_frames
        frames = context[:, -P:] if future is None else r.cat([context[:, -P:], future], 1)
        names = {s.name for s in self.meta.specs["idm_encoder"][0]}  # state / video_features are optional
        feeds = {"frames": frames, "instr": instr}
        if "state" in names:
            feeds["state"] = r.asarray(((last - mean) / std).astype(np.float32))
        if "video_features" in names:
            feeds["video_features"] = feats
        if "future_t" in names:
            feeds["future_t"] = r.asarray(np.array([self.future_t], np.float32))
        if "video_tokens" in names:
            feeds["video_tokens"] = tokens
        ctx = r.run("idm_encoder", feeds)["ctx"]
        anoise = _noise(noise, "action", (1, cfg.horizon, ACTION_DIM), self._rng, self.action_temperature)
        known = self._prefix(prefix, last) if prefix is not None and len(prefix) else None
        sample = r.numpy(self._euler("action_step", r.asarray(anoise), self._action_grid, {"ctx": ctx}, "a",
                                     known, anoise))
        mean, std = self.meta.norms["action"]
        a = (sample * std + mean).astype(np.float32)  # (1, H, 10)
        if cfg.relative_actions:
            a = npops.actions_from_relative(a, last)
        out = {"actions": npops.actions_to_pose8(a[0]), "timings": timings}  # (H, 8)
        timings["idm_ms"] = (time.perf_counter() - t0) * 1e3
        if return_frames and pred is not None:
            K, cams = pred.shape[1], pred.shape[2]
            imgs = r.numpy(r.run("decoder", {"latents": pred.reshape((K * cams,) + tuple(pred.shape[3:]))})["images"])
            imgs = np.round(imgs.transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)  # (K*cams, S, S, 3)
            out["predicted_frames"] = imgs.reshape(K, cams, *imgs.shape[1:])
        timings["total_ms"] = (time.perf_counter() - t_start) * 1e3
        return out
