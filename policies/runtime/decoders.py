"""Post-processing: raw actor outputs -> typed decisions, named by the contract's ``action.decoder``.

An exported graph outputs what the actor network computes (logits, probabilities, pre-activations,
tanh scores); the decoder here turns a batch of those rows into the scenario's decision type exactly
as the training code does (argmax per head, the share squashing and clipping, the download
threshold, categorical sampling by the inverse CDF, the EdgeAIGC projection onto the storage and
share constraints). A file naming a decoder this runtime lacks is refused at load time.

Every decoder is ``decode(out, view, params, uniform=None)``. ``uniform`` is given only in the
``sample`` mode of a stochastic policy: one U[0, 1) draw per row from the policy's seeded rng (the
contract's ``action.sampling`` says its dtype), so the runtime samples exactly as the trainer's
evaluation does; without it a categorical head takes its argmax.

torch-free: numpy only. Argmax heads follow numpy's tie rule (first maximum); squashing is computed
in float64 from the float32 outputs, within 1e-7 of the torch code's float32 values.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from policies.scenarios.base import OffloadDecision, OffloadView


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) -> inf for x < -709: 1 / inf = 0, the limit
        return 1.0 / (1.0 + np.exp(-x))


def _sigmoid1(x: float) -> float:
    """:func:`_sigmoid` of one float, the same arithmetic (0.0 where exp(-x) overflows, as numpy's inf
    gives): large pre-activations from out-of-distribution inputs decide, they do not crash."""
    try:
        return 1.0 / (1.0 + math.exp(-x))
    except OverflowError:
        return 0.0


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


def decode_mato_maddpg(out: np.ndarray, view: OffloadView, params: dict[str, Any],
                       uniform: np.ndarray | None = None) -> OffloadDecision:
    """MADDPG-MATO actor output [N server logits, eta pre-activation, beta pre-activation]:
    server = argmax, eta = clip(stretch * sigmoid(x) - (stretch - 1) / 2, 0, 1), beta = sigmoid(x) >= 0.5;
    eta = 0 runs the task locally (target 0), else target = 1 + server (policies.train.maddpg).
    Computed in float64 from the float32 outputs (one row: plain Python, the same arithmetic).
    Optional ``params['download_targets']`` (MADDPG-MATO on the factory, whose "servers" are the remote
    targets edge0..edgeN-1 and the cloud): the download flag is kept only for these target indices (the
    edge servers) and cleared elsewhere, where the simulator ignores it (no cache at the device or cloud)."""
    N = int(params["servers"])
    stretch = float(params["eta_stretch"])
    half, thr = (stretch - 1.0) / 2.0, float(params.get("download_threshold", 0.5))
    dl_targets = params.get("download_targets")
    if out.shape[0] == 1:  # a single decision: scalar arithmetic is ~5x cheaper than numpy on 1-row arrays
        row = out[0].tolist()
        eta = min(max(stretch * _sigmoid1(row[N]) - half, 0.0), 1.0)
        server = _argmax_allowed(row[:N], view.allowed[0, 1:N + 1].tolist())
        if server < 0:  # no edge server allowed: local
            eta = 0.0
        target = 1 + server if eta > 0 else 0
        download = None
        if view.has_download:
            flag = _sigmoid1(row[N + 1]) >= thr
            download = np.array([flag and (dl_targets is None or target in dl_targets)])
        return OffloadDecision(target=np.array([target], dtype=np.int64), share=np.array([eta]), download=download)
    x = np.asarray(out, dtype=np.float64)
    eta = np.minimum(np.maximum(stretch * _sigmoid(x[:, N]) - half, 0.0), 1.0)
    server = _masked_argmax(x[:, :N], view.allowed[:, 1:N + 1])
    eta = np.where(view.allowed[:, 1:N + 1].any(axis=1), eta, 0.0)  # no edge server allowed: local
    target = np.where(eta > 0, server + 1, 0).astype(np.int64)
    download = (_sigmoid(x[:, N + 1]) >= thr) if view.has_download else None
    if download is not None and dl_targets is not None:
        download = download & np.isin(target, np.asarray(dl_targets, dtype=np.int64))
    return OffloadDecision(target=target, share=eta, download=download)


def decode_factory_heads(out: np.ndarray, view: OffloadView, params: dict[str, Any],
                         uniform: np.ndarray | None = None) -> OffloadDecision:
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


def decode_argmax_target(out: np.ndarray, view: OffloadView, params: dict[str, Any],
                         uniform: np.ndarray | None = None) -> OffloadDecision:
    """One score per target (logits or Q-values; GMEL's AMARL and baselines): target = argmax over the
    targets the view allows (numpy's first-maximum tie rule, as torch's argmax on CPU). The decision
    carries only the target (GMEL decides where a task runs, no share, no download flag)."""
    if out.shape[0] == 1:
        if view.allowed.all():
            t = int(np.argmax(out[0]))
        else:
            t = max(_argmax_allowed(out[0].tolist(), view.allowed[0].tolist()), 0)
        return OffloadDecision(target=np.array([t], dtype=np.int64))
    return OffloadDecision(target=_masked_argmax(out, view.allowed).astype(np.int64))


def softmax64(logits: np.ndarray) -> np.ndarray:
    """softmax in float64 (torch.softmax(x.double())): exp(x - max) / sum, row-wise."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sample_categorical(out: np.ndarray, uniform: np.ndarray, params: dict[str, Any],
                       allowed: np.ndarray | None = None) -> np.ndarray:
    """Inverse-CDF draw per row, exactly the trainers' rule: cdf = cumsum(p), target =
    min(#{k: cdf_k < u * cdf_last}, K - 1). ``params['output']`` says what ``out`` holds:
    ``logits`` (p = softmax in float64, policies.train.common.sample_rows: TOPPO, AIECOF actor-critics) or
    ``probabilities`` (p as given, cumsum and product in float32: policies.train.ladts.Agents.act)."""
    K = out.shape[1]
    if params.get("output") == "probabilities":
        p = np.asarray(out, dtype=np.float32)
        if allowed is not None and not allowed.all():
            p = np.where(allowed, p, np.float32(0.0))
        c = np.cumsum(p, axis=1, dtype=np.float32)
        u = np.asarray(uniform, dtype=np.float32).reshape(-1, 1)
    else:
        p = softmax64(out)
        if allowed is not None and not allowed.all():
            p = np.where(allowed, p, 0.0)
        c = np.cumsum(p, axis=1)
        u = np.asarray(uniform, dtype=np.float64).reshape(-1, 1)
    return np.minimum((c < u * c[:, -1:]).sum(axis=1), K - 1).astype(np.int64)


def decode_categorical_target(out: np.ndarray, view: OffloadView, params: dict[str, Any],
                              uniform: np.ndarray | None = None) -> OffloadDecision:
    """A categorical policy over the targets (TOPPO's LSTM actor, the LAD-TS denoising actor): without
    ``uniform`` (modes ``deterministic`` and ``argmax``) the argmax of the output (logits or
    probabilities, as the trainer's greedy evaluation takes it); with it (mode ``sample``) the
    inverse-CDF draw of :func:`sample_categorical`. Targets the view marks infeasible are skipped."""
    if uniform is None:
        return decode_argmax_target(out, view, params)
    return OffloadDecision(target=sample_categorical(out, uniform, params, view.allowed))


def _alternatives(params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    alt = params["alternatives"]
    return (np.asarray(alt["target"], dtype=np.int64), np.asarray(alt["share"], dtype=np.float64),
            np.asarray(alt["download"], dtype=bool))


def decode_factory_alternatives(out: np.ndarray, view: OffloadView, params: dict[str, Any],
                                uniform: np.ndarray | None = None) -> OffloadDecision:
    """One score per joint alternative (target, share, download) of the factory (``sim.candidates()``:
    local; every edge server x share level x download; cloud x share level), as AMARL and TOPPO choose
    on the factory (``policies.train.factory_agents``): ``params['alternatives']`` lists the
    alternatives' ``target``, ``share`` and ``download`` columns. Without ``uniform`` the argmax
    (numpy's first maximum) over the alternatives whose target the view allows; with it (mode
    ``sample``) the inverse-CDF draw of :func:`sample_categorical` over them. The chosen alternative is
    the decision: its target, share and download flag, as ``FactoryAdapter.candidate_decision``."""
    tg, sh, dl = _alternatives(params)
    if out.shape[1] != tg.size:
        raise ValueError(f"the policy scores {out.shape[1]} alternatives, its contract lists {tg.size}")
    allowed = view.allowed[:, tg] if view.allowed is not None else np.ones(out.shape, dtype=bool)
    if uniform is not None:
        choice = sample_categorical(out, uniform, params, allowed)
    elif out.shape[0] == 1:
        choice = np.array([max(_argmax_allowed(out[0].tolist(), allowed[0].tolist()), 0)], dtype=np.int64)
    else:
        choice = _masked_argmax(out, allowed).astype(np.int64)
    return OffloadDecision(target=tg[choice], share=sh[choice], download=dl[choice])


def check_factory_alternatives(params: dict[str, Any], sim, source: str) -> str | None:
    """The file's alternatives must be the simulator's ``candidates()``, in order (the action indexes them)."""
    cand = getattr(sim, "candidates", None)
    if cand is None:
        return f"'{source}' chooses among a factory's joint alternatives, but scenario '{sim.name}' has none"
    alt = params["alternatives"]
    cols = ("target", "share", "download")
    if not isinstance(alt, dict) or not all(isinstance(alt.get(k), list) for k in cols) \
            or len({len(alt[k]) for k in cols}) != 1:
        return f"'{source}' lists its alternatives without equally long 'target', 'share' and 'download' columns"
    want = cand()
    have = _alternatives(params)
    if want[0].size != have[0].size:
        return (f"'{source}' chooses among {have[0].size} alternatives (target, share, download), but the simulator "
                f"offers {want[0].size}")
    for name, a, b in zip(("target", "share", "download"), have, want):
        if not np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)):
            i = int(np.nonzero(np.asarray(a, dtype=np.float64) != np.asarray(b, dtype=np.float64))[0][0])
            return (f"'{source}' alternative {i} has {name} {a[i]!r}, but the simulator's alternative {i} has "
                    f"{name} {b[i]!r} (another set of servers or share levels)")
    return None


def project_allocation_row(view: Any, x: np.ndarray, rule: str, floor: float):
    """``policies.scenarios.edgeaigc.project_batch`` for ONE raw vector x in [0, 1]^(E*M + 2EU), with the
    same result bit for bit, ~10x cheaper on one row: the knapsack repair's first fit in Python scalars
    (the same comparisons and float64 subtractions in the same order after a stable descending sort),
    the association on the (E, U) arrays of this row only (the same comparisons: ties to the lower
    index / to the larger path gain), the share masking and row scaling by the scenario's own
    ``_masked_shares`` (the same numpy reductions, row by row).
    Returns (cache (E, M) bool, alpha (E, U), L (E, U), association (U,) int64)."""
    return _project_row(view, np.clip(np.asarray(x, dtype=np.float64).reshape(-1), 0.0, 1.0), rule, floor)


def _project_row(view: Any, x: np.ndarray, rule: str, floor: float):
    from policies.scenarios.edgeaigc import _masked_shares

    E, U, M = view.num_edges, view.num_users, view.num_models
    size, storage = view.model_size_gb.tolist(), view.storage_gb.tolist()
    score = x[:E * M].reshape(E, M)
    order = np.argsort(-score, axis=1, kind="stable").tolist()  # stable: ties to the lower model index
    scores = score.tolist()
    cache = np.zeros((E, M), dtype=bool)
    for j in range(E):  # step 1 (18b, 18e): first fit in descending score, cached when the score is > 0.5
        remaining, sj = storage[j], scores[j]
        for m in order[j]:
            if not sj[m] > 0.5:
                break  # every later score is <= 0.5 too: nothing more is cached
            if size[m] <= remaining + 1e-9:
                cache[j, m] = True
                remaining -= size[m]
    a0 = E * M
    g = view.path_gain_db
    if rule == "nearest":  # step 2 (spec 1.7): the largest path gain (first maximum)
        assoc = g.argmax(axis=0)
    else:  # among the ES caching Z_i (all if none) the highest alpha score, ties to the larger path gain
        held = cache[:, view.model]  # (E, U)
        cand = held | ~held.any(axis=0)
        xa = x[a0:a0 + E * U].reshape(E, U)
        cand &= xa >= np.where(cand, xa, -np.inf).max(axis=0)
        assoc = np.where(cand, g, -np.inf).argmax(axis=0)  # first maximum: the lower ES index on equal gains
    users = np.arange(U)
    mask = np.zeros((2, E, U), dtype=bool)  # [alpha mask (user i sends to ES j), L mask (... and hits)]
    mask[0, assoc, users] = True
    mask[1, assoc, users] = cache[assoc, view.model]
    shares = _masked_shares(x[a0:].reshape(2, E, U), mask, floor)  # steps 3-4 (18c, 18d, 18f, 18g)
    return cache, shares[0], shares[1], assoc.astype(np.int64)


def decode_edgeaigc_projection(out: np.ndarray, view: Any, params: dict[str, Any],
                               uniform: np.ndarray | None = None):
    """The EdgeAIGC TD3/DDPG actor's tanh scores [beta (E*M) | alpha (E*U) | L (E*U)] of one slot ->
    an :class:`AllocationDecision` that meets constraints 18b-18g: x = (clip(a, -1, 1) + 1) / 2 in
    float64, then the scenario's projection (``policies.scenarios.edgeaigc.project_batch``: knapsack
    repair of the cache scores, association, masking, flooring and row scaling of the shares; computed
    by :func:`project_allocation_row`, its one-row form, bit for bit) with the view's storage, model
    sizes and path gains. ``policies.train.td3.AllocationProjection`` (what the trainer evaluates) is
    the same projection in torch ops: the cache and association agree exactly, the shares to the last
    bits (both float64)."""
    from policies.scenarios.edgeaigc import AllocationDecision

    if out.shape[0] != 1:
        raise ValueError(f"an EdgeAIGC allocation is decided one slot (one observation row) at a time, got "
                         f"{out.shape[0]} rows")
    # (clip(a, -1, 1) + 1) / 2, in [0, 1] (no second clip); maximum/minimum: np.clip's wrapper costs ~5 us
    x = (np.minimum(np.maximum(np.asarray(out[0], dtype=np.float64), -1.0), 1.0) + 1.0) / 2.0
    cache, alpha, comp, assoc = _project_row(view, x, params["association"], float(params["share_floor"]))
    return AllocationDecision(cache, alpha, comp, assoc)


def check_edgeaigc_projection(params: dict[str, Any], sim, source: str) -> str | None:
    """The allocation's sizes must be the simulator's (E edge servers, U users, M models)."""
    p = getattr(sim, "preset", None)
    want = {"edges": getattr(p, "num_edges", None), "users": getattr(p, "num_users", None),
            "models": getattr(p, "num_models", None)}
    for key, have in want.items():
        if have is not None and int(params.get(key, -1)) != int(have):
            return (f"'{source}' allocates for {params.get(key)} {key}, but the simulator has {have} {key}")
    return None


DECODERS: dict[str, Callable[[np.ndarray, OffloadView, dict], OffloadDecision]] = {
    "mato_maddpg": decode_mato_maddpg,
    "factory_heads": decode_factory_heads,
    "argmax_target": decode_argmax_target,
    "categorical_target": decode_categorical_target,
    "edgeaigc_projection": decode_edgeaigc_projection,
    "factory_alternatives": decode_factory_alternatives,
}

# The parameters a decoder reads (contract ``action.params``); a file without one is refused at load time.
DECODER_PARAMS: dict[str, tuple[str, ...]] = {
    "mato_maddpg": ("servers", "eta_stretch"), "factory_heads": ("heads", "local_target", "cloud_target"),
    "argmax_target": (), "categorical_target": (), "edgeaigc_projection": ("association", "share_floor"),
    "factory_alternatives": ("alternatives",)}

# The view a decoder reads: "offload" (OffloadView rows -> OffloadDecision) or "allocation"
# (policies.scenarios.edgeaigc.AllocationView, one per slot -> AllocationDecision).
DECODER_VIEWS = {"edgeaigc_projection": "allocation"}

# Load-time checks of a decoder's parameters against the simulator: (params, sim, source) -> error or None.
DECODER_CHECKS: dict[str, Callable[[dict, Any, str], str | None]] = {"edgeaigc_projection": check_edgeaigc_projection,
                                                                    "factory_alternatives": check_factory_alternatives}


# Decoders whose share is one of a few levels (a discrete choice) rather than a continuous value.
DISCRETE_SHARE = {"mato_maddpg": False, "factory_heads": True, "argmax_target": True, "categorical_target": True,
                  "edgeaigc_projection": False, "factory_alternatives": True}


def discrete_key(decision: OffloadDecision, share_is_discrete: bool) -> np.ndarray:
    """Per row, the discrete part of a decision (target, download flag, and the share when it is a
    level) as one comparable array; two decisions agree on a row iff their keys are equal."""
    n = decision.target.shape[0]
    dl = np.zeros(n) if decision.download is None else np.asarray(decision.download, dtype=np.float64)
    sh = np.zeros(n)
    if share_is_discrete and decision.share is not None:
        sh = np.round(np.asarray(decision.share, dtype=np.float64), 9)
    return np.stack([decision.target.astype(np.float64), dl, sh], axis=1)
