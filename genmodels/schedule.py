"""Diffusion noise schedule and the DDIM sampling rule (numpy only; training and runtime share it).

Training (DDPM, Ho et al. 2020): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t in 0..T-1. The
network predicts v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022), from which
eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v and x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v. Why not
plain eps prediction: at t = T-1 abar is ~1e-9, and x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
amplifies any error of eps ~3e4 times, so sampling with few steps (z = 1..3) from pure noise fails
(we tried: saturated black-and-white noise); v stays well conditioned at every t.
Schedule: cosine (Nichol & Dhariwal 2021), betas clipped at 0.999.
Sampling (DDIM, Song et al. 2021, eta = 0): z steps at "trailing" timesteps
t_k = round(T (z - k) / z) - 1, k = 0..z-1 (so z = 1 denoises from pure noise in one step).
"""

from __future__ import annotations

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def cosine_alpha_bar(T: int = NUM_TRAIN_TIMESTEPS, s: float = 0.008) -> np.ndarray:
    """abar_t for t = 0..T-1 (float64)."""
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(T + 1, dtype=np.float64)
    betas = np.clip(1 - f(t[1:]) / f(t[:-1]), 0.0, 0.999)
    return np.cumprod(1 - betas)


def ddim_timesteps(steps: int, T: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """The z = ``steps`` timesteps of DDIM sampling, descending (trailing spacing)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    return (np.round(np.arange(steps, 0, -1) * (T / steps)).astype(np.int64) - 1)


def ddim_step(x: np.ndarray, v: np.ndarray, abar_t: float, abar_prev: float) -> np.ndarray:
    """One deterministic DDIM update x_t -> x_prev from the network's v, with x_0 clipped to the data
    range [-1, 1] and eps made consistent with the clipped x_0."""
    x0 = np.clip(np.sqrt(abar_t) * x - np.sqrt(1 - abar_t) * v, -1.0, 1.0)
    eps = (x - np.sqrt(abar_t) * x0) / np.sqrt(1 - abar_t)
    return np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev) * eps
