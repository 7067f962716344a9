"""Post-processing: raw actor outputs -> typed decisions, named by the contract's ``action.decoder``.

An exported graph outputs what the actor network computes (logits, pre-activations); the decoder
here turns a batch of those rows into an :class:`OffloadDecision` exactly as the training code does
(argmax per head, the share squashing and clipping, the download threshold). A later actor with a
different action (an allocation, a projected output) adds a decoder; a file naming a decoder this
runtime lacks is refused at load time.

torch-free: numpy only. Argmax heads follow numpy's tie rule (first maximum); squashing is computed
in float64 from the float32 outputs, within 1e-7 of the torch code's float32 values.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from policies.scenarios.base import OffloadDecision, OffloadView


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _argmax_allowed(row: list[float], allowed: list[bool]) -> int:
    """First index of the largest allowed entry (np.argmax's tie rule); -1 if none is allowed."""
    best, value = -1, -math.inf
    for i, (x, ok) in enumerate(zip(row, allowed)):
        if ok and x > value:
            best, value = i, x
    return best


def _masked_argmax(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    if allowed.all():
        return logits.argmax(axis=1)
    return np.where(allowed, logits, -np.inf).argmax(axis=1)


def decode_mato_maddpg(out: np.ndarray, view: OffloadView, params: dict[str, Any]) -> OffloadDecision:
    """MADDPG-MATO actor output [N server logits, eta pre-activation, beta pre-activation]:
    server = argmax, eta = clip(stretch * sigmoid(x) - (stretch - 1) / 2, 0, 1), beta = sigmoid(x) >= 0.5;
    eta = 0 runs the task locally (target 0), else target = 1 + server (policies.train.maddpg).
    Computed in float64 from the float32 outputs (one row: plain Python, the same arithmetic)."""
    N = int(params["servers"])
    stretch = float(params["eta_stretch"])
    half, thr = (stretch - 1.0) / 2.0, float(params.get("download_threshold", 0.5))
    if out.shape[0] == 1:  # a single decision: scalar arithmetic is ~5x cheaper than numpy on 1-row arrays
        row = out[0].tolist()
        eta = min(max(stretch / (1.0 + math.exp(-row[N])) - half, 0.0), 1.0)
        server = _argmax_allowed(row[:N], view.allowed[0, 1:N + 1].tolist())
        if server < 0:  # no edge server allowed: local
            eta = 0.0
        target = 1 + server if eta > 0 else 0
        download = np.array([1.0 / (1.0 + math.exp(-row[N + 1])) >= thr]) if view.has_download else None
        return OffloadDecision(target=np.array([target], dtype=np.int64), share=np.array([eta]), download=download)
    x = np.asarray(out, dtype=np.float64)
    eta = np.minimum(np.maximum(stretch * _sigmoid(x[:, N]) - half, 0.0), 1.0)
    server = _masked_argmax(x[:, :N], view.allowed[:, 1:N + 1])
    eta = np.where(view.allowed[:, 1:N + 1].any(axis=1), eta, 0.0)  # no edge server allowed: local
    target = np.where(eta > 0, server + 1, 0).astype(np.int64)
    download = (_sigmoid(x[:, N + 1]) >= thr) if view.has_download else None
    return OffloadDecision(target=target, share=eta, download=download)


def decode_factory_heads(out: np.ndarray, view: OffloadView, params: dict[str, Any]) -> OffloadDecision:
    """Factory actor logits [target (K), share level (S), download (2)], argmax per head: the
    share is ``share_levels[level]`` (0 when the target is local), the download flag counts only
    for an edge target (False for local and cloud)."""
    heads = params["heads"]
    K, S = int(heads[0]["width"]), int(heads[1]["width"])
    levels = heads[1]["values"]
    local, cloud = int(params["local_target"]), int(params["cloud_target"])
    if out.shape[0] == 1:
        row = out[0].tolist()
        t = max(_argmax_allowed(row[:K], view.allowed[0].tolist()), 0)
        lv = _argmax_allowed(row[K:K + S], [True] * S)
        dl = row[K + S + 1] > row[K + S] and t != local and t != cloud
        return OffloadDecision(target=np.array([t], dtype=np.int64),
                               share=np.array([0.0 if t == local else float(levels[lv])]), download=np.array([dl]))
    target = _masked_argmax(out[:, :K], view.allowed).astype(np.int64)
    level = np.argmax(out[:, K:K + S], axis=1)
    dl = np.argmax(out[:, K + S:K + S + 2], axis=1) == 1
    share = np.where(target == local, 0.0, np.asarray(levels, dtype=np.float64)[level])
    download = dl & (target != local) & (target != cloud)
    return OffloadDecision(target=target, share=share, download=download)


DECODERS: dict[str, Callable[[np.ndarray, OffloadView, dict], OffloadDecision]] = {
    "mato_maddpg": decode_mato_maddpg,
    "factory_heads": decode_factory_heads,
}


# Decoders whose share is one of a few levels (a discrete choice) rather than a continuous value.
DISCRETE_SHARE = {"mato_maddpg": False, "factory_heads": True}


def discrete_key(decision: OffloadDecision, share_is_discrete: bool) -> np.ndarray:
    """Per row, the discrete part of a decision (target, download flag, and the share when it is a
    level) as one comparable array; two decisions agree on a row iff their keys are equal."""
    n = decision.target.shape[0]
    dl = np.zeros(n) if decision.download is None else np.asarray(decision.download, dtype=np.float64)
    sh = np.zeros(n)
    if share_is_discrete and decision.share is not None:
        sh = np.round(np.asarray(decision.share, dtype=np.float64), 9)
    return np.stack([decision.target.astype(np.float64), dl, sh], axis=1)
