"""The one cost model (DESIGN principle 1).

Every simulator and the gateway's own estimates compute latency, energy, queueing, transmission and
model-switch costs with these functions; there is no second copy. All functions are numpy-vectorized
(scalars or arrays broadcast) and carry their units in argument names. Citations name the paper by
its short name (docs/papers/<name>.md holds the equations as implemented) and the equation number.
"""

from __future__ import annotations

import numpy as np

BITS_PER_MB = 8e6  # megabyte -> bits (MATO, GMEL, EdgeAIGC sizes are printed in MB)
BITS_PER_MBIT = 1e6


# --------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------
def db_to_linear(db):
    return np.power(10.0, np.asarray(db, dtype=np.float64) / 10.0)


def dbm_to_w(dbm):
    return np.power(10.0, (np.asarray(dbm, dtype=np.float64) - 30.0) / 10.0)


# --------------------------------------------------------------------------------------------
# Channel and transmission
# --------------------------------------------------------------------------------------------
def path_loss_db_3gpp(distance_m):
    """Urban macro path loss PL(d) = 128.1 + 37.6 log10(d / 1 km), dB (EdgeAIGC eq. 5; also our
    reading for MATO and GMEL, whose path-loss model is not printed)."""
    d_km = np.maximum(np.asarray(distance_m, dtype=np.float64), 1.0) / 1000.0
    return 128.1 + 37.6 * np.log10(d_km)


def rayleigh_power_gain(rng: np.random.Generator, size) -> np.ndarray:
    """|delta|^2 of Rayleigh fading: exponential with mean 1 (EdgeAIGC eq. 6, GMEL's fading)."""
    return rng.exponential(1.0, size=size)


def channel_gain(distance_m, fading_power_gain=1.0):
    """Linear channel power gain h = 10^(-PL(d)/10) * |delta|^2 (EdgeAIGC eq. 6, dB applied as a
    linear factor; the printed product of a dB value with fading is dimensionally wrong)."""
    return db_to_linear(-path_loss_db_3gpp(distance_m)) * fading_power_gain


def noise_power_w(noise_dbm_per_hz, bandwidth_hz):
    """Thermal noise N0 * B in watts for a density in dBm/Hz (EdgeAIGC Table 3: -174 dBm/Hz)."""
    return dbm_to_w(noise_dbm_per_hz) * np.asarray(bandwidth_hz, dtype=np.float64)


def shannon_rate_bps(bandwidth_hz, tx_power_w, gain, noise_w, interference_w=0.0):
    """r = B log2(1 + p h / (N + I)), bit/s (MATO r_m^n in eq. 5; GMEL eq. 3; EdgeAIGC eqs. 7-8)."""
    bw = np.asarray(bandwidth_hz, dtype=np.float64)
    snr = np.asarray(tx_power_w) * np.asarray(gain) / (np.asarray(noise_w) + interference_w)
    return bw * np.log2(1.0 + snr)


def transmission_delay_s(bits, rate_bps):
    """T = x / r (MATO eq. 5; AIECOF eq. 14; LAD-TS eq. 2 upload and result return). A zero rate
    with zero bits costs nothing; a zero rate with data is an infinite delay."""
    bits = np.asarray(bits, dtype=np.float64)
    rate = np.asarray(rate_bps, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(bits > 0, bits / rate, 0.0)
    return out


def transmission_energy_j(tx_power_w, delay_s):
    """E = p T (MATO eq. 6, eq. 8; AIECOF transmit energy)."""
    return np.asarray(tx_power_w, dtype=np.float64) * np.asarray(delay_s, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Computation
# --------------------------------------------------------------------------------------------
def compute_delay_s(cycles, cpu_hz, quantum_s: float | None = None, tol: float = 1e-9):
    """T = W / f (MATO eqs. 3, 9; LAD-TS eq. 3 with W = rho z). With ``quantum_s`` the delay is
    rounded up to whole quanta, as the ceilings of MATO eqs. 3 and 9 and GMEL eq. 1 (slots) say;
    ``tol`` keeps 0.7/0.1 = 6.999.. from rounding to 8 quanta."""
    t = np.asarray(cycles, dtype=np.float64) / np.asarray(cpu_hz, dtype=np.float64)
    if quantum_s:
        t = np.ceil(t / quantum_s - tol) * quantum_s
        t = np.maximum(t, 0.0)
    return t


def compute_energy_j(cycles, cpu_hz, kappa):
    """Dynamic CPU energy E = kappa f^2 W (MATO eqs. 4, 10; AIECOF local energy)."""
    f = np.asarray(cpu_hz, dtype=np.float64)
    return np.asarray(kappa, dtype=np.float64) * f * f * np.asarray(cycles, dtype=np.float64)


def denoising_workload_cycles(steps, cycles_per_step):
    """Work of a diffusion task: rho z (LAD-TS eq. 3): z denoising steps of rho cycles each."""
    return np.asarray(steps, dtype=np.float64) * np.asarray(cycles_per_step, dtype=np.float64)


def partial_offload_latency_s(local_s, edge_s):
    """Local and offloaded parts run in parallel: T = max(T_local, T_edge) (MATO eq. 13)."""
    return np.maximum(local_s, edge_s)


def edge_path_latency_s(transmit_s, switch_s, compute_s):
    """T_edge = T_trans + T_switch + T_comp (MATO eq. 11); energy sums likewise (eq. 12)."""
    return np.asarray(transmit_s) + np.asarray(switch_s) + np.asarray(compute_s)


# --------------------------------------------------------------------------------------------
# Models: download, switching, caching
# --------------------------------------------------------------------------------------------
def model_switch_delay_s(model_bits, link_rate_bps, cached):
    """T_switch = X_i / r_c^n if the model is not cached, else 0 (MATO eq. 7)."""
    return np.where(np.asarray(cached, dtype=bool), 0.0, transmission_delay_s(model_bits, link_rate_bps))


def zipf_probabilities(num_items: int, exponent: float) -> np.ndarray:
    """P(m) = m^-gamma / sum_k k^-gamma, m = 1..M (EdgeAIGC eq. 2)."""
    ranks = np.arange(1, num_items + 1, dtype=np.float64)
    w = ranks ** (-float(exponent))
    return w / w.sum()


def markov_chain_path(rng: np.random.Generator, transition: np.ndarray, start: int, steps: int) -> np.ndarray:
    """State indices of a Markov chain (EdgeAIGC eq. 1: the Zipf exponent's regime)."""
    cum = np.cumsum(np.asarray(transition, dtype=np.float64), axis=1)
    u = rng.random(steps)
    states = np.empty(steps, dtype=np.int64)
    s = int(start)
    for t in range(steps):  # a chain is sequential; steps is the number of slots (tens)
        states[t] = s
        s = int(np.searchsorted(cum[s], u[t], side="right"))
        s = min(s, cum.shape[1] - 1)
    return states


def cache_fits(cache: np.ndarray, model_size: np.ndarray, storage: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Storage constraint sum_m beta_{n,m} s_m <= S_n per server (EdgeAIGC eq. 16)."""
    return (np.asarray(cache, dtype=np.float64) @ np.asarray(model_size, dtype=np.float64)) <= np.asarray(storage) + tol


# --------------------------------------------------------------------------------------------
# Queues
# --------------------------------------------------------------------------------------------
def fifo_finish_times(arrival_s, service_s, free_at_s: float = 0.0) -> np.ndarray:
    """Completion times of jobs in FIFO order on one server: c_k = max(a_k, c_{k-1}) + s_k
    (GMEL eq. 1, AIECOF eq. 18, LAD-TS eq. 4 all reduce to this recursion). Closed form without a
    loop: with S_k = sum_{i<=k} s_i, c_k = S_k + max(free_at, max_{j<=k}(a_j - S_{j-1}))."""
    a = np.asarray(arrival_s, dtype=np.float64)
    s = np.asarray(service_s, dtype=np.float64)
    if a.size == 0:
        return a.copy()
    csum = np.cumsum(s)
    prev = np.concatenate(([0.0], csum[:-1]))
    start_bound = np.maximum.accumulate(np.maximum(a - prev, free_at_s))
    return csum + start_bound


def fifo_finish_times_grouped(queue, arrival_s, service_s, free_at_s) -> np.ndarray:
    """:func:`fifo_finish_times` for many FIFO queues at once. ``queue`` gives each job's queue
    (jobs of one queue are in FIFO order in the arrays); ``free_at_s[q]`` is when queue q frees."""
    q = np.asarray(queue, dtype=np.int64)
    a = np.asarray(arrival_s, dtype=np.float64)
    s = np.asarray(service_s, dtype=np.float64)
    free = np.asarray(free_at_s, dtype=np.float64)
    if q.size == 0:
        return a.copy()
    order = np.argsort(q, kind="stable")
    qs, as_, ss = q[order], a[order], s[order]
    csum = np.cumsum(ss)
    first = np.r_[True, qs[1:] != qs[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(qs.size), 0))
    base = np.where(group_start > 0, csum[group_start - 1], 0.0)
    S = csum - base  # within-queue cumulative service
    prev = S - ss
    key = np.maximum(as_ - prev, free[qs])
    # running max restarted at each queue: offset each group so accumulate cannot leak across
    offset = np.cumsum(first) * (np.abs(key).max() + S.max() + 1.0) * 4
    start_bound = np.maximum.accumulate(key + offset) - offset
    out = np.empty_like(a)
    out[order] = S + start_bound
    return out


def backlog_update(backlog, arrivals, served):
    """Q(t+1) = max(Q(t) - served, 0) + arrivals: work conserving, never negative (GMEL eqs. 1-2,
    AIECOF eq. 18, LAD-TS eq. 4 in units of work or seconds)."""
    return np.maximum(np.asarray(backlog, dtype=np.float64) - served, 0.0) + arrivals


def equal_share(capacity, active_count):
    """Capacity split equally among the active queues of a server (GMEL eq. 2, bandwidth eq. 3a)."""
    n = np.asarray(active_count, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.asarray(capacity, dtype=np.float64) / np.maximum(n, 1.0), 0.0)


def sqrt_optimal_shares(demand) -> np.ndarray:
    """argmin_x sum_i a_i / x_i s.t. sum_i x_i = 1: x_i = sqrt(a_i) / sum_j sqrt(a_j) (the exact
    continuous optimum of delay-sum shares; the reference allocation for EdgeAIGC eqs. 17-18)."""
    r = np.sqrt(np.maximum(np.asarray(demand, dtype=np.float64), 0.0))
    tot = r.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tot > 0, r / np.where(tot > 0, tot, 1.0), 0.0)


# --------------------------------------------------------------------------------------------
# Deadlines
# --------------------------------------------------------------------------------------------
def meets_deadline(latency_s, deadline_s, tol: float = 1e-9):
    """A task completes only if its latency does not exceed its deadline (GMEL drop rule; AIECOF
    tau_max; MATO's completion rate)."""
    return np.asarray(latency_s) <= np.asarray(deadline_s) + tol


# --------------------------------------------------------------------------------------------
# Cloud
# --------------------------------------------------------------------------------------------
def cloud_execution_latency_s(input_bits, output_bits, cycles, uplink_bps, backhaul_bps, cloud_hz, downlink_bps):
    """A task run in the cloud: upload to the edge, relay over the backhaul, compute, return
    (EdgeAIGC eq. 11 for cache misses; MATO's cloud at 40 GHz)."""
    up = transmission_delay_s(input_bits, uplink_bps) + transmission_delay_s(input_bits, backhaul_bps)
    down = transmission_delay_s(output_bits, backhaul_bps) + transmission_delay_s(output_bits, downlink_bps)
    return up + compute_delay_s(cycles, cloud_hz) + down
