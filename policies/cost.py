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
    first = np.r_[True, qs[1:] != qs[:-1]]
    # One cumsum and running max per queue slice keeps the recursion exact (the number of queues
    # is the number of servers or devices, not of tasks).
    finish = np.empty_like(as_)
    bounds = np.r_[np.flatnonzero(first), qs.size]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        finish[lo:hi] = fifo_finish_times(as_[lo:hi], ss[lo:hi], float(free[qs[lo]]))
    out = np.empty_like(a)
    out[order] = finish
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



def fifo_serve_slot(remaining, capacity, first: int = 0) -> np.ndarray:
    """Work served in one slot by many FIFO, work-conserving queues (GMEL eq. 2 and its OFDMA
    communication queues, spec section 7.1): ``remaining[..., q, k]`` is the work of job k of queue q
    (0 for empty places), ``capacity[..., q]`` the work queue q can serve in the slot. Jobs are
    oldest first along the last axis, or, for a ring buffer, oldest at place ``first`` and wrapping
    around. Capacity left when a job finishes goes to the next job of the same queue, never to
    another queue: served_k = clip(cap - sum_{j older than k} rem_j, 0, rem_k)."""
    rem = np.asarray(remaining, dtype=np.float64)
    cap = np.asarray(capacity, dtype=np.float64)[..., None]
    csum = np.cumsum(rem, axis=-1)
    ahead = csum - rem
    if first:
        newest = csum[..., first - 1 : first]  # places 0..first-1 hold the newest jobs
        oldest = csum[..., -1:] - newest  # places first..K-1 hold the oldest jobs
        ahead = np.where(np.arange(rem.shape[-1]) >= first, ahead - newest, ahead + oldest)
    return np.minimum(np.maximum(cap - ahead, 0.0), rem)


def slotted_fifo_with_deadline(busy_until_slot, arrival_slot, work_slots, deadline_slot):
    """One slotted FIFO processor per device, GMEL eq. (1) with the spec's [fix] (max with the
    arrival slot and a deadline cap). A job arriving at slot t starts at s = max(t, b); it completes
    at boundary s + n if s + n <= t + D; otherwise it is dropped at boundary t + D, and the processor
    works on it until then (b = t + D) if s < t + D, else it is never started (b unchanged).
    Returns (resolve_boundary, completed, new_busy_until), all in slots; vectorized over devices."""
    b = np.asarray(busy_until_slot, dtype=np.int64)
    start = np.maximum(np.asarray(arrival_slot, dtype=np.int64), b)
    finish = start + np.asarray(work_slots, dtype=np.int64)
    deadline = np.asarray(deadline_slot, dtype=np.int64)
    completed = finish <= deadline
    resolve = np.where(completed, finish, deadline)
    new_b = np.where(completed, finish, np.where(start < deadline, deadline, b))
    return resolve, completed, new_b

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


# --------------------------------------------------------------------------------------------
# Work-ahead queues (LAD-TS)
# --------------------------------------------------------------------------------------------
def work_ahead_grouped(queue, work, num_queues: int) -> np.ndarray:
    """Work assigned to the same queue by the jobs before each job (jobs in decision order):
    q^bef_k = sum_{j<k, queue_j = queue_k} work_j (LAD-TS eq. 3, the in-slot term q^bef_{n,t,b'}).
    A grouped exclusive cumulative sum, vectorized over all jobs; units are those of ``work``. The
    sums are accumulated job by job per queue (a shifted column cumsum), so the first job of a queue
    gets exactly 0 and the values equal a sequential running total bit for bit."""
    q = np.asarray(queue, dtype=np.int64)
    w = np.asarray(work, dtype=np.float64)
    n = q.size
    if n == 0:
        return w.copy()
    if n * num_queues <= 4_000_000:
        m = np.zeros((n, num_queues))
        m[np.arange(n), q] = w
        running = np.cumsum(m, axis=0)
        out = np.zeros(n)
        out[1:] = running[np.arange(n - 1), q[1:]]  # the column's total over the jobs before k
        return out
    # large batches: sort by queue (stable) and subtract each group's base; clamp the rounding
    order = np.argsort(q, kind="stable")
    ws = w[order]
    csum = np.cumsum(ws)
    counts = np.bincount(q, minlength=num_queues)
    group_base = np.r_[0.0, csum][np.cumsum(counts) - counts]
    out = np.empty_like(w)
    out[order] = np.maximum(csum - ws - group_base[q[order]], 0.0)
    return out


def queue_wait_s(backlog_cycles, ahead_cycles, cpu_hz):
    """FCFS wait behind the carried backlog and the work assigned earlier in the slot:
    T^wait = (q_{t-1} + q^bef) / f (LAD-TS eq. 3); any consistent units (Gcycles and GHz give s)."""
    return (np.asarray(backlog_cycles, dtype=np.float64) + np.asarray(ahead_cycles, dtype=np.float64)) / np.asarray(
        cpu_hz, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# EdgeAIGC: FDMA uplink, per-request cost, storage cost, weighted objective
# --------------------------------------------------------------------------------------------
def fdma_rate_bps(share, bandwidth_hz, tx_power_w, gain, noise_dbm_per_hz):
    """R = alpha W log2(1 + p h / (N0 alpha W)), bit/s: a user on a fraction ``share`` of an FDMA band
    (EdgeAIGC eq. 7). The noise scales with the occupied band; a zero share gives a zero rate."""
    bw = np.asarray(share, dtype=np.float64) * np.asarray(bandwidth_hz, dtype=np.float64)
    noise = noise_power_w(noise_dbm_per_hz, bw)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = shannon_rate_bps(bw, tx_power_w, gain, noise)
    return np.where(bw > 0, rate, 0.0)


def aigc_request_cost(input_mb, output_mb, gpu_seconds, via_cloud, transfer_price_per_mb, relay_price_per_mb,
                      gpu_price_per_s):
    """Monetary cost of one AIGC request (EdgeAIGC eqs. 12-13): edge hit
    C = d_in C_ue + C_A8 F/A8 + d_out C_ue; a cloud miss adds the edge-cloud relay price C_ecs on
    both d_in and d_out. Sizes in MB, ``gpu_seconds`` = F / A8 (one-GPU seconds), prices per MB and
    per GPU-second (units are our reading, spec 1.9)."""
    per_mb = np.asarray(transfer_price_per_mb, dtype=np.float64) + np.where(
        np.asarray(via_cloud, dtype=bool), relay_price_per_mb, 0.0)
    data = np.asarray(input_mb, dtype=np.float64) + np.asarray(output_mb, dtype=np.float64)
    return data * per_mb + np.asarray(gpu_price_per_s, dtype=np.float64) * np.asarray(gpu_seconds, dtype=np.float64)


def cache_storage_cost(cache, model_size_gb, price_per_gb):
    """C_st = sum_j C_st^E sum_m beta_jm S_m (EdgeAIGC eq. 14), summed over the last two axes of
    ``cache`` (..., servers, models); price per GB cached per slot."""
    stored_gb = np.asarray(cache, dtype=np.float64) @ np.asarray(model_size_gb, dtype=np.float64)
    return float(price_per_gb) * stored_gb.sum(axis=-1)


def weighted_time_cost(time_s, cost, w_time, w_cost):
    """G = w1 sum T_res + w2 (sum C + C_st) (EdgeAIGC eq. 15): time in s and cost in cost units,
    already summed by the caller."""
    return float(w_time) * np.asarray(time_s, dtype=np.float64) + float(w_cost) * np.asarray(cost, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Factory scenario: text work, FIFO with deadline aborts, LRU caches, penalized reward
# --------------------------------------------------------------------------------------------
def token_workload_cycles(tokens, cycles_per_token):
    """Work of a text-generation task: generated tokens x cycles per token (ours: the text analogue
    of LAD-TS eq. 3's w = rho z; decoding cost grows linearly with the report length)."""
    return np.asarray(tokens, dtype=np.float64) * np.asarray(cycles_per_token, dtype=np.float64)


def fifo_finish_times_grouped_abort(queue, arrival_s, service_s, free_at_s, abort_at_s, tol: float = 1e-9):
    """FIFO queues whose jobs are dropped at an absolute time (GMEL spec §1.7 drop rule; AIECOF
    eq. 4 [fix] "executes until t_end, then dropped"): a job that cannot finish by ``abort_at_s``
    runs from its start until the abort time (or not at all if it starts later) and frees the
    server then; a job arriving after its abort time never enters the queue. Recursion per queue
    (jobs in FIFO order in the arrays): start_k = max(a_k, c_{k-1}), served_k = clip(abort_k -
    start_k, 0, s_k), c_k = start_k + served_k, solved with :func:`fifo_finish_times_grouped`
    by fixed-point iteration (job k is exact after k rounds; usually 2-3 rounds).
    Returns (start_s, served_s, finish_s, completed, queued): finish_s = start_s + served_s."""
    q = np.asarray(queue, dtype=np.int64)
    a = np.asarray(arrival_s, dtype=np.float64)
    s = np.asarray(service_s, dtype=np.float64)
    abort = np.asarray(abort_at_s, dtype=np.float64)
    queued = a < abort - tol
    idx = np.flatnonzero(queued)
    start = a.copy()
    served = np.zeros_like(s)
    if idx.size:
        qi, ai, si, bi = q[idx], a[idx], s[idx], abort[idx]
        cur = si.copy()
        for _ in range(idx.size + 1):
            fin = fifo_finish_times_grouped(qi, ai, cur, free_at_s)
            st = fin - cur
            new = np.clip(bi - st, 0.0, si)
            new = np.where(st + si <= bi + tol, si, new)
            if np.array_equal(new, cur):
                break
            cur = new
        start[idx], served[idx] = st, cur
    completed = queued & (start + s <= abort + tol)
    return start, served, start + served, completed, queued


def lru_evict(cached, last_used, size, budget, tol: float = 1e-9) -> np.ndarray:
    """One server's cache after LRU eviction: drop the least recently used models until
    sum_m cached_m size_m <= budget (EdgeAIGC eq. 16 storage constraint; MATO spec §1.8 LRU).
    ``cached`` (L,) bool, ``last_used`` (L,) any increasing stamp, ``size`` (L,) and ``budget``
    in one unit. Returns the new (L,) bool mask; the most recent model is evicted last."""
    keep = np.asarray(cached, dtype=bool).copy()
    size = np.asarray(size, dtype=np.float64)
    order = np.argsort(np.where(keep, np.asarray(last_used, dtype=np.float64), np.inf), kind="stable")
    total = float(size[keep].sum())
    for m in order:  # at most L models, oldest first
        if total <= budget + tol or not keep[m]:
            break
        keep[m] = False
        total -= float(size[m])
    return keep


def penalized_task_reward(latency_s, energy_j, cost, dropped, w_latency, w_energy, w_cost, drop_penalty):
    """r = -(w1 T + w2 E + w3 C + P_e 1{dropped}) per task (MATO eq. 18 with sigma = 1, its penalty
    P_e for a missed limit; the cost term is EdgeAIGC eq. 15's monetary part)."""
    return -(float(w_latency) * np.asarray(latency_s, dtype=np.float64)
             + float(w_energy) * np.asarray(energy_j, dtype=np.float64)
             + float(w_cost) * np.asarray(cost, dtype=np.float64)
             + float(drop_penalty) * np.asarray(dropped, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# MATO: energy of a partially offloaded task
# --------------------------------------------------------------------------------------------
def partial_offload_energy_j(local_j, edge_j, aggregate: str = "max"):
    """E = max(E_local, E_edge) (MATO eq. 14 as printed) or, with ``aggregate="sum"``, the physical
    total E_local + E_edge (spec docs/papers/mato.md 1.6 option); J."""
    if aggregate == "max":
        return np.maximum(local_j, edge_j)
    if aggregate == "sum":
        return np.asarray(local_j, dtype=np.float64) + np.asarray(edge_j, dtype=np.float64)
    raise ValueError(f"energy aggregate must be 'max' or 'sum', not {aggregate!r}")


# --------------------------------------------------------------------------------------------
# AIECOF: whole-slot durations, per-slot CPU utilization, the normalized four-term reward
# --------------------------------------------------------------------------------------------
def whole_slots(duration_s, slot_s: float, tol: float = 1e-9) -> np.ndarray:
    """Slots a duration occupies, ceil(d / dt) as int64 (AIECOF eq. 3 D_com = ceil(x rho / (f dt)),
    eq. 14 D_trans = ceil(x / (r dt)), eq. 18 D_com^ES = ceil(W / (f_n dt))). ``tol`` keeps
    0.36/0.4 = 0.8999999999999999 slots at 1 and 2.8/1.4 = 2.0 at 2."""
    q = np.asarray(duration_s, dtype=np.float64) / float(slot_s)
    return np.maximum(np.ceil(q - tol), 0.0).astype(np.int64)


def cpu_utilization(cycles, cpu_hz, slot_s: float, slots_elapsed, cap: float = 0.98):
    """CPU loading of a device in the ``slots_elapsed``-th slot (1-based) of a task of ``cycles``
    (AIECOF eq. 12 with the spec's index and per-slot-capacity fix):
    L = min{cap, W / (f dt (t - t' + 1))}, dimensionless; cap 0.98 is the paper's."""
    denom = np.asarray(cpu_hz, dtype=np.float64) * float(slot_s) * np.asarray(slots_elapsed, dtype=np.float64)
    return np.minimum(float(cap), np.asarray(cycles, dtype=np.float64) / denom)


def normalized_score_reward(energy_j, mean_energy_j, mean_delay_s, max_delay_s, dropped_so_far, decided_so_far,
                            load_variance, weights, eps: float = 1e-10):
    """AIECOF eqs. 29-30 (spec 1.12, minus on the load term [fix]):
    sigma_E = -log2(E / l_E + eps), sigma_D = 1 - l_D / D_max, sigma_F = 1 - g / G,
    r = lambda1 sigma_E + lambda2 sigma_D + lambda3 sigma_F - lambda4 sigma_L.
    Energies in J, delays in s, g and G task counts, ``load_variance`` = sigma_L (dimensionless),
    ``weights`` = (lambda1, lambda2, lambda3, lambda4)."""
    l1, l2, l3, l4 = (float(w) for w in weights)
    sigma_e = -np.log2(np.asarray(energy_j, dtype=np.float64) / np.asarray(mean_energy_j, dtype=np.float64) + eps)
    sigma_d = 1.0 - np.asarray(mean_delay_s, dtype=np.float64) / float(max_delay_s)
    decided = np.asarray(decided_so_far, dtype=np.float64)
    sigma_f = 1.0 - np.asarray(dropped_so_far, dtype=np.float64) / np.maximum(decided, 1.0)
    return l1 * sigma_e + l2 * sigma_d + l3 * sigma_f - l4 * np.asarray(load_variance, dtype=np.float64)
