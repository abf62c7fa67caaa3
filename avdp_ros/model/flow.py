"""Rectified-flow helpers, stateless, with injectable noise.

Convention: x_t = (1 - t) x0 + t eps, so t = 0 is data and t = 1 is pure noise; the network
predicts the velocity dx_t/dt = eps - x0 and sampling integrates it from t = 1 down to t = 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def sample_t(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None,
             logit_normal: bool = True, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Training flow times in (0, 1).

    Args:
        logit_normal: t = sigmoid(N(mean, std)) (SD3), which spends more samples on mid noise levels
            where the velocity is hardest to predict; otherwise t ~ U(0, 1).
    """
    if logit_normal:
        z = torch.randn(shape, generator=generator, device=device) * std + mean
        return torch.sigmoid(z)
    return torch.rand(shape, generator=generator, device=device)


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """(B, ...) leading dims of t broadcast against the trailing dims of `like`."""
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim())).to(like.dtype)


def interpolate(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t eps; `t` covers the leading dims of x0 (e.g. (B,) or (B, F))."""
    t = _expand(t, x0)
    return (1.0 - t) * x0 + t * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """d x_t / dt = eps - x0."""
    return eps - x0


def timesteps(steps: int, device=None) -> Tensor:
    """The `steps + 1` times 1 = t_0 > t_1 > ... > t_steps = 0 of a uniform Euler grid."""
    if steps < 1:
        raise ValueError(f"sampling steps = {steps}: expected >= 1")
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


def euler_sample(velocity_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int,
                 known: Tensor | None = None, known_mask: Tensor | None = None) -> Tensor:
    """Integrate dx/dt = v(x, t) from t = 1 (x = noise) to t = 0 with `steps` Euler steps.

    Args:
        velocity_fn: (x_t (B, ...), t (B,)) -> velocity (B, ...).
        noise: the starting point x_1; the sampler adds no other randomness, so the same noise
            gives the same sample.
        known, known_mask: inpainting. Where the boolean `known_mask` (broadcast against `noise`)
            is set, x_t is replaced before every step by the exact noisy version of `known`,
            (1 - t) known + t noise, so the network always sees those entries on their true path
            and generates the rest consistently with them; the result equals `known` there.
    Returns:
        x_0, shaped like `noise`.
    """
    if (known is None) != (known_mask is None):
        raise ValueError("euler_sample: pass both known and known_mask, or neither")
    grid = timesteps(steps, device=noise.device)
    x = noise
    for i in range(steps):
        t, t_next = grid[i], grid[i + 1]
        if known is not None:
            x = torch.where(known_mask, (1.0 - t) * known + t * noise, x)
        v = velocity_fn(x, t.expand(x.shape[0]).to(x.dtype))
        x = x + (t_next - t).to(x.dtype) * v
    if known is not None:
        x = torch.where(known_mask, known, x)
    return x
