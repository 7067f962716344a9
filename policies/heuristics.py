"""Generic heuristic policies over :class:`OffloadView`: random, round_robin, greedy, local.

Scenario-specific policies (every ``opt``, and heuristics of non-offloading decisions such as
caching) live in the scenario modules and are found first by :func:`make_policy`.
"""

from __future__ import annotations

import numpy as np

from policies.errors import UnknownNameError
from policies.scenarios.base import OffloadDecision, OffloadView, Policy, Simulator


def _first_allowed(allowed: np.ndarray) -> np.ndarray:
    return np.argmax(allowed, axis=1)


def _full_offload(view: OffloadView, target: np.ndarray) -> OffloadDecision:
    """All work to the chosen target; download a missing model when a download is possible."""
    share = None
    if view.has_share:
        share = np.where(target == view.local_target, 0.0, 1.0) if view.local_target is not None else np.ones(view.n)
    download = np.ones(view.n, dtype=bool) if view.has_download else None
    return OffloadDecision(target=target.astype(np.int64), share=share, download=download)


class RandomPolicy(Policy):
    """Uniform over the feasible targets; offload share uniform in [0, 1]; download flag a fair coin."""

    name = "random"

    def decide(self, view: OffloadView) -> OffloadDecision:
        weights = view.allowed / view.allowed.sum(axis=1, keepdims=True)
        u = self.rng.random(view.n)[:, None]
        target = np.minimum((np.cumsum(weights, axis=1) < u).sum(axis=1), view.num_targets - 1)
        share = download = None
        if view.has_share:
            share = self.rng.random(view.n)
            if view.local_target is not None:
                share = np.where(target == view.local_target, 0.0, share)
        if view.has_download:
            download = self.rng.random(view.n) < 0.5
        return OffloadDecision(target=target.astype(np.int64), share=share, download=download)


class RoundRobinPolicy(Policy):
    """Each source cycles through its feasible non-local targets in index order (AIECOF's Round-Robin)."""

    name = "round_robin"

    def reset(self, rng, oracle=None):
        super().reset(rng, oracle)
        self.next_index: dict[int, int] = {}

    def decide(self, view: OffloadView) -> OffloadDecision:
        allowed = view.allowed.copy()
        if view.local_target is not None:
            only_local = allowed.sum(axis=1) == 1
            allowed[~only_local, view.local_target] = False
        k = view.num_targets
        counters = self.next_index
        if view.n and (allowed == allowed[0]).all():
            # Common case, vectorized: every row has the same feasible targets L; the j-th row of a
            # source in this batch takes L[(position of its counter + j) mod |L|].
            targets = np.flatnonzero(allowed[0])
            src = view.source.astype(np.int64)
            order = np.argsort(src, kind="stable")
            s_sorted = src[order]
            first = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
            run_start = np.repeat(first, np.diff(np.r_[first, len(s_sorted)]))
            rank = np.empty(view.n, dtype=np.int64)
            rank[order] = np.arange(view.n) - run_start
            uniq = s_sorted[first]
            start_pos = np.array([np.searchsorted(targets, counters.get(int(u), 0)) % len(targets) for u in uniq])
            base = start_pos[np.searchsorted(uniq, src)]
            target = targets[(base + rank) % len(targets)]
            counts = np.diff(np.r_[first, len(s_sorted)])
            for u, b, c in zip(uniq.tolist(), start_pos.tolist(), counts.tolist()):
                counters[u] = int(targets[(b + c) % len(targets)])
            return _full_offload(view, target)
        target = np.empty(view.n, dtype=np.int64)
        # Rows with differing feasible sets take their turns one by one.
        for i, src in enumerate(view.source.tolist()):
            start = counters.get(src, 0)
            row = allowed[i]
            order = (start + np.arange(k)) % k
            pick = int(order[np.argmax(row[order])])
            target[i] = pick
            counters[src] = (pick + 1) % k
        return _full_offload(view, target)


class GreedyPolicy(Policy):
    """MATO's Greedy: the nearest compatible target, else the device itself (else the nearest feasible)."""

    name = "greedy"

    def decide(self, view: OffloadView) -> OffloadDecision:
        proximity = view.proximity if view.proximity is not None else np.zeros(view.allowed.shape)
        compatible = view.compatible if view.compatible is not None else view.allowed
        ok = view.allowed & compatible
        if view.local_target is not None:
            ok[:, view.local_target] = False
        dist = np.where(ok, proximity, np.inf)
        nearest = np.argmin(dist, axis=1)
        has = np.isfinite(dist[np.arange(view.n), nearest])
        if view.local_target is not None:
            fallback = np.full(view.n, view.local_target)
        else:
            fallback = np.argmin(np.where(view.allowed, proximity, np.inf), axis=1)
        return _full_offload(view, np.where(has, nearest, fallback))


class LocalPolicy(Policy):
    """Everything on the device."""

    name = "local"

    def decide(self, view: OffloadView) -> OffloadDecision:
        if view.local_target is None:
            raise UnknownNameError("policy 'local' needs a scenario where tasks can run on the device")
        return _full_offload(view, np.full(view.n, view.local_target, dtype=np.int64))


GENERIC_POLICIES: dict[str, type[Policy]] = {
    "random": RandomPolicy,
    "round_robin": RoundRobinPolicy,
    "greedy": GreedyPolicy,
    "local": LocalPolicy,
}


def make_policy(name: str, sim: Simulator) -> Policy:
    """The policy ``name`` for ``sim``'s scenario; scenario-specific implementations come first.
    ``run:DIR`` or a trained run's directory gives that run's policy (torch is imported only then);
    a path ending in ``.onnx`` gives the exported policy through the torch-free runtime."""
    if name not in sim.POLICIES:
        if name.endswith(".onnx"):
            from policies.runtime import OnnxPolicy  # torch-free

            return OnnxPolicy(name, sim)
        from policies.train.registry import is_run_reference, load_trained_policy  # torch-free module

        if is_run_reference(name):
            return load_trained_policy(name, sim)
        raise UnknownNameError(
            f"unknown policy '{name}' for scenario '{sim.name}'; available: {', '.join(sim.POLICIES)}, "
            "a trained run as run:DIR, or an exported FILE.onnx"
        )
    policy = sim.scenario_policy(name)
    if policy is None:
        policy = GENERIC_POLICIES[name]()
    return policy
