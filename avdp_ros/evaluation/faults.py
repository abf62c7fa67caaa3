"""Faults avdp-eval-ros injects on the real path, and the rules that inject them (pure: the
evaluator node and the policy process apply them).

- camera_dropout: the policy's camera topics are remapped to a relay in the evaluator, which
  stops forwarding the first (third-person) camera during the window;
- stale_stamps: the relay forwards both cameras re-stamped STALE_OFFSET_S in the past;
- nan_actions: the loaded policy is wrapped in `NanActions`: the chunks of observations in the
  window come back all-NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FAULTS = ("none", "camera_dropout", "nan_actions", "stale_stamps")
RELAYED = ("camera_dropout", "stale_stamps")  # faults injected by the camera relay
RELAY_TOPIC = "/avdp_eval/relay/camera{}/image_raw"  # the policy's i-th camera while relayed
STALE_OFFSET_S = 1.0  # stale_stamps: how far in the past frames are re-stamped


@dataclass
class FaultSpec:
    kind: str = "none"  # one of FAULTS
    start_s: float = 3.0  # after the episode reset, bridge clock
    duration_s: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"fault '{self.kind}': expected one of {', '.join(FAULTS)}")
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ValueError(f"fault start {self.start_s}: expected seconds >= 0 after the reset")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"fault duration {self.duration_s}: expected seconds > 0")


def relay_action(kind: str, camera: int, t: float, window: tuple[float, float] | None) -> str:
    """What the camera relay does with a frame of camera `camera` (0: third person) stamped `t`:
    "drop", "restamp" (STALE_OFFSET_S into the past, then forward) or "forward". `window` is the
    episode's fault window on the same clock as `t` (None: no fault now)."""
    if window is not None and window[0] <= t < window[1]:
        if kind == "camera_dropout" and camera == 0:
            return "drop"
        if kind == "stale_stamps":
            return "restamp"
    return "forward"


class NanActions:
    """A policy whose chunks are all-NaN for observations in [start_s, start_s + duration_s) after
    the episode's first observation; otherwise the wrapped policy's answer unchanged. The model
    still runs (same timing); only its output is replaced, as a numerically broken head would."""

    def __init__(self, policy, start_s: float, duration_s: float):
        self._policy = policy
        self.start_s, self.duration_s = float(start_s), float(duration_s)
        self.injected = 0
        self._t0: float | None = None

    def __getattr__(self, name):  # obs_hz, cfg, kind, ... of the wrapped policy
        return getattr(self._policy, name)

    def reset(self) -> None:
        self._t0 = None
        self._policy.reset()

    def _in_window(self, obs: dict) -> bool:
        t = float(obs["t_obs"])
        if self._t0 is None:
            self._t0 = t
        return self.start_s <= t - self._t0 < self.start_s + self.duration_s

    def observe(self, obs: dict):
        self._in_window(obs)  # the episode's first observation may come through observe
        return self._policy.observe(obs)

    def infer(self, obs: dict, **kwargs) -> dict:
        inject = self._in_window(obs)
        out = self._policy.infer(obs, **kwargs)
        if inject:
            self.injected += 1
            out = {**out, "actions": np.full_like(np.asarray(out["actions"], dtype=np.float64), np.nan)}
        return out
