"""Generic heuristics over OffloadView."""

import numpy as np

from policies.heuristics import GreedyPolicy, LocalPolicy, RandomPolicy, RoundRobinPolicy
from policies.scenarios.base import OffloadView


def _view(n, k=4, allowed=None, source=None, local=0):
    allowed = np.ones((n, k), dtype=bool) if allowed is None else allowed
    source = np.zeros(n, dtype=np.int64) if source is None else source
    return OffloadView(slot=0, target_names=tuple(f"t{i}" for i in range(k)), source=source, allowed=allowed,
                       local_target=local, has_share=True, has_download=True)


def _rr_by_loop(views):
    """Round robin written the slow, obvious way: each source walks its feasible non-local targets."""
    counters, out = {}, []
    for v in views:
        targets = []
        for i in range(v.n):
            row = v.allowed[i].copy()
            if v.local_target is not None and row.sum() > 1:
                row[v.local_target] = False
            start = counters.get(int(v.source[i]), 0)
            order = [(start + j) % v.num_targets for j in range(v.num_targets)]
            pick = next(t for t in order if row[t])
            targets.append(pick)
            counters[int(v.source[i])] = (pick + 1) % v.num_targets
        out.append(np.array(targets))
    return out


def test_round_robin_vectorized_equals_loop():
    rng = np.random.default_rng(0)
    views = [_view(int(n), source=rng.integers(0, 3, int(n))) for n in rng.integers(1, 12, 20)]
    pol = RoundRobinPolicy()
    pol.reset(rng)
    got = [pol.decide(v).target for v in views]
    for g, w in zip(got, _rr_by_loop(views)):
        np.testing.assert_array_equal(g, w)


def test_round_robin_with_mixed_feasibility_equals_loop():
    rng = np.random.default_rng(1)
    views = []
    for _ in range(20):
        n = int(rng.integers(1, 10))
        allowed = rng.random((n, 5)) < 0.6
        allowed[:, 0] = True
        views.append(_view(n, k=5, allowed=allowed, source=rng.integers(0, 3, n)))
    pol = RoundRobinPolicy()
    pol.reset(rng)
    for v, w in zip(views, _rr_by_loop(views)):
        np.testing.assert_array_equal(pol.decide(v).target, w)


def test_random_respects_feasibility_and_is_seeded():
    allowed = np.zeros((1000, 4), dtype=bool)
    allowed[:, [1, 3]] = True
    v = _view(1000, allowed=allowed)
    a, b = RandomPolicy(), RandomPolicy()
    a.reset(np.random.default_rng(5))
    b.reset(np.random.default_rng(5))
    da, db = a.decide(v), b.decide(v)
    np.testing.assert_array_equal(da.target, db.target)
    assert set(np.unique(da.target)) == {1, 3}
    assert 0.4 < np.mean(da.target == 1) < 0.6
    assert np.all((da.share >= 0) & (da.share <= 1))


def test_greedy_nearest_compatible_else_local():
    v = _view(3)
    v.proximity = np.array([[0, 5, 1, 3], [0, 5, 1, 3], [0, 5, 1, 3]], dtype=float)
    v.compatible = np.array([[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 0, 0]], dtype=bool)
    p = GreedyPolicy()
    p.reset(np.random.default_rng(0))
    d = p.decide(v)
    np.testing.assert_array_equal(d.target, [2, 3, 0])
    np.testing.assert_array_equal(d.share, [1.0, 1.0, 0.0])


def test_local():
    p = LocalPolicy()
    p.reset(np.random.default_rng(0))
    d = p.decide(_view(4, local=0))
    np.testing.assert_array_equal(d.target, 0)
    np.testing.assert_array_equal(d.share, 0.0)
