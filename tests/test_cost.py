"""The one cost model: worked examples and invariants (scenario-specific examples live beside each scenario)."""

import math

import numpy as np
import pytest

from policies import cost


def test_shannon_rate_worked_example():
    # B = 10 MHz, p = 0.1 W, d = 100 m: PL = 128.1 + 37.6 log10(0.1) = 90.5 dB -> h = 10^-9.05
    # N = -174 dBm/Hz = 10^(-20.4) W/Hz; * 1e7 Hz = 3.981e-14 W; SNR = 0.1 * 8.913e-10 / 3.981e-14 = 2238.7
    # r = 1e7 * log2(2239.7) = 111.29 Mbit/s
    h = cost.channel_gain(100.0)
    assert h == pytest.approx(10 ** -9.05, rel=1e-9)
    n = cost.noise_power_w(-174.0, 10e6)
    assert n == pytest.approx(3.981e-14, rel=1e-3)
    r = cost.shannon_rate_bps(10e6, 0.1, h, n)
    assert r == pytest.approx(1e7 * math.log2(1 + 0.1 * 10 ** -9.05 / (10 ** -20.4 * 1e7)), rel=1e-12)
    assert r / 1e6 == pytest.approx(111.29, abs=0.01)


def test_transmission_and_compute():
    # MATO eq. 5: 10 MB at 100 Mbit/s = 0.8 s; eq. 6: 0.5 W * 0.8 s = 0.4 J
    t = cost.transmission_delay_s(10 * cost.BITS_PER_MB, 100e6)
    assert t == pytest.approx(0.8)
    assert cost.transmission_energy_j(0.5, t) == pytest.approx(0.4)
    assert cost.transmission_delay_s(0.0, 0.0) == 0.0
    # eq. 3 with a 0.1 s quantum: 0.7 Gcycles at 1 GHz is exactly 7 quanta, not 8
    assert cost.compute_delay_s(0.7e9, 1e9, quantum_s=0.1) == pytest.approx(0.7)
    assert cost.compute_delay_s(0.71e9, 1e9, quantum_s=0.1) == pytest.approx(0.8)
    # eq. 4: kappa f^2 W = 1e-28 * (2e9)^2 * 1e9 = 0.4 J
    assert cost.compute_energy_j(1e9, 2e9, 1e-28) == pytest.approx(0.4)
    # LAD-TS eq. 3: z = 10 steps of 0.2 Gcycles at 20 GHz = 0.1 s
    assert cost.compute_delay_s(cost.denoising_workload_cycles(10, 0.2e9), 20e9) == pytest.approx(0.1)


def test_partial_offload_and_switch():
    assert cost.partial_offload_latency_s(1.2, 0.7) == 1.2
    sw = cost.model_switch_delay_s(np.array([800e6, 800e6]), 1e9, np.array([True, False]))
    np.testing.assert_allclose(sw, [0.0, 0.8])


def _fifo_reference(arrival, service, free_at=0.0):
    out, t = [], free_at
    for a, s in zip(arrival, service):
        t = max(t, a) + s
        out.append(t)
    return np.array(out)


def test_fifo_finish_times_match_recursion():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = rng.integers(1, 40)
        a = np.sort(rng.uniform(0, 5, n))
        s = rng.uniform(0, 1, n)
        free = rng.uniform(0, 3)
        np.testing.assert_allclose(cost.fifo_finish_times(a, s, free), _fifo_reference(a, s, free))


def test_fifo_grouped_matches_per_queue_and_keeps_order():
    rng = np.random.default_rng(2)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        q = rng.integers(0, 4, n)
        a = np.sort(rng.uniform(0, 5, n))
        s = rng.uniform(0.01, 1, n)
        free = rng.uniform(0, 3, 4)
        got = cost.fifo_finish_times_grouped(q, a, s, free)
        for k in range(4):
            idx = np.flatnonzero(q == k)
            want = _fifo_reference(a[idx], s[idx], free[k])
            np.testing.assert_allclose(got[idx], want)
            # FIFO: finish order equals arrival order within a queue; work is conserved
            assert np.all(np.diff(got[idx]) >= -1e-12)
            if idx.size:
                assert got[idx][-1] >= max(free[k], a[idx][0]) + s[idx].sum() - 1e-9


def test_backlog_never_negative_and_conserves_work():
    rng = np.random.default_rng(3)
    q = np.zeros(5)
    total_in = total_served = 0.0
    for _ in range(200):
        arrivals = rng.exponential(1.0, 5)
        capacity = rng.uniform(0.5, 1.5, 5)
        served = np.minimum(q, capacity)
        q_next = cost.backlog_update(q, arrivals, capacity)
        assert np.all(q_next >= 0)
        total_in += arrivals.sum()
        total_served += served.sum()
        q = q_next
    assert total_in == pytest.approx(total_served + q.sum())


def test_zipf_and_shares():
    p = cost.zipf_probabilities(20, 0.8)
    assert p.sum() == pytest.approx(1.0) and np.all(np.diff(p) < 0)
    np.testing.assert_allclose(cost.zipf_probabilities(4, 0.0), 0.25)
    x = cost.sqrt_optimal_shares(np.array([1.0, 4.0, 0.0]))
    np.testing.assert_allclose(x, [1 / 3, 2 / 3, 0.0])
    # the sqrt rule beats equal shares on sum a_i / x_i
    a = np.array([1.0, 9.0])
    assert (a / cost.sqrt_optimal_shares(a)).sum() < (a / 0.5).sum()
    np.testing.assert_allclose(cost.equal_share(10.0, np.array([0, 1, 4])), [0.0, 10.0, 2.5])


def test_markov_chain_follows_transition_matrix():
    rng = np.random.default_rng(0)
    P = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(cost.markov_chain_path(rng, P, 0, 6), [0, 1, 0, 1, 0, 1])
    P = np.array([[0.9, 0.1], [0.5, 0.5]])
    path = cost.markov_chain_path(np.random.default_rng(1), P, 0, 20000)
    stay = np.mean(path[1:][path[:-1] == 0] == 0)
    assert stay == pytest.approx(0.9, abs=0.02)


def test_deadline_and_cache_fit():
    np.testing.assert_array_equal(cost.meets_deadline(np.array([0.7, 0.1 * 7, 0.7000001]), 0.7), [True, True, False])
    cache = np.array([[1, 1, 0], [0, 1, 1]])
    np.testing.assert_array_equal(cost.cache_fits(cache, np.array([4.0, 5.0, 8.0]), np.array([9.0, 12.0])), [True, False])
