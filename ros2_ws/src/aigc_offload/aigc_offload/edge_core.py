"""An edge server's logic without ROS: admission, forwarding, FIFO queue, model cache, status.

It follows the factory simulator's edge tier (docs/papers/factory.md §1.4, policies/scenarios/
factory.py ``price``) so a deployed server does what the policy was trained against:

- A task offloaded here (share eta of work W) runs for ``eta W / f_n`` (MATO eq. 9,
  ``policies.cost.compute_delay_s``) in one FIFO queue; a task whose deadline passes while it
  waits or runs is aborted at the deadline (AIECOF eq. 18; the simulator's abort rule).
- Cache hit: queue. Miss with the download flag (MATO's beta): fetch the model from the cloud
  (verified), the task waits for it. Miss without it: forward to the peer that holds the model
  with the earliest estimated finish, or to the cloud when none does.
- With forwarding on (LAD-TS inter-server scheduling), a task goes to the holder with the earliest
  estimated finish, from the peers' last status, when that beats running it here.
- Models are kept under a storage budget with LRU eviction (``policies.cost.lru_evict``); a model
  a queued task needs is never evicted.

Times are POSIX seconds (``time.time()``); all nodes of a deployment share a clock (one host, or
NTP/PTP-synchronised hosts).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from policies.cost import compute_delay_s, lru_evict

KIND_REPORT, KIND_IMAGE = 0, 1


@dataclass
class EdgeTask:
    """One task (or the offloaded part of a split task) at an edge server."""

    task_id: str
    device_id: str
    origin: str
    model_name: str
    task_kind: int  # KIND_REPORT | KIND_IMAGE
    units: int  # tokens or denoising steps of the whole task
    share: float  # offloaded share eta in (0, 1]
    work_cycles: float  # eta * W, cycles
    input_bits: int
    created_at_s: float  # POSIX s
    deadline_at_s: float  # POSIX s
    download: bool
    prompt: str = ""
    hops: int = 0
    part: int = 0  # TaskResult.PART_*
    # Filled by the server.
    received_at_s: float = 0.0
    cache_hit: bool = False
    downloaded: bool = False


@dataclass(frozen=True)
class Admission:
    accepted: bool
    action: str  # "queue" | "download" | "forward:<server_id>" | "cloud" | "reject"
    reason: str = ""
    expected_wait_s: float = 0.0
    starts_download: bool = False  # this task's miss registered the model's download: the caller starts it


class RecentAcks:
    """The acknowledgement a server gave each recently accepted hand-off, by (task id, hops).

    Why: the gateway sends a hand-off again when its acknowledgement does not arrive (DDS can drop
    a reply), so a server can see a task twice; the second time it answers as the first time and
    does not queue, download, forward or run it again. Hops are part of the key so that a task
    forwarded back to a server it passed is still admitted. Only accepted hand-offs are kept (a
    refused one can be judged again); the oldest go beyond ``capacity``. Thread-safe."""

    def __init__(self, capacity: int = 50_000):
        self.capacity = capacity
        self._acks: OrderedDict[tuple[str, int], Admission] = OrderedDict()
        self._lock = threading.Lock()
        self.repeats = 0  # hand-offs answered from here

    def get(self, task_id: str, hops: int) -> Admission | None:
        with self._lock:
            ack = self._acks.get((task_id, hops))
            self.repeats += ack is not None
            return ack

    def forget(self, task_id: str, hops: int) -> None:
        """Drop the acknowledgement of a hand-off whose task will not run here after all (a repeat of it
        must be judged again, not answered 'accepted')."""
        with self._lock:
            self._acks.pop((task_id, hops), None)

    def put(self, task_id: str, hops: int, ack: Admission) -> None:
        if not ack.accepted:
            return
        with self._lock:
            self._acks[(task_id, hops)] = ack
            while len(self._acks) > self.capacity:
                self._acks.popitem(last=False)


@dataclass
class PeerStatus:
    server_id: str
    cpu_hz: float
    backlog_s: float
    cached: frozenset[str]
    stamp_s: float
    inter_link_bps: float = 400e6


@dataclass
class ModelCache:
    """Models on disk under a storage budget, LRU-evicted (MATO spec §1.8, EdgeAIGC eq. 16)."""

    budget_bytes: int
    sizes: dict[str, int]  # every catalog model -> bytes
    cached: dict[str, float] = field(default_factory=dict)  # name -> last-used stamp
    pinned: dict[str, int] = field(default_factory=dict)  # name -> queued tasks needing it
    clock: float = 0.0

    def has(self, name: str) -> bool:
        return name in self.cached

    def touch(self, name: str) -> None:
        self.clock += 1.0
        if name in self.cached:
            self.cached[name] = self.clock

    def used_bytes(self) -> int:
        return int(sum(self.sizes.get(n, 0) for n in self.cached))

    def add(self, name: str) -> list[str]:
        """Add a model and evict least-recently-used unpinned ones until the budget holds;
        returns the evicted names."""
        self.clock += 1.0
        self.cached[name] = self.clock
        names = list(self.cached)
        size = np.array([self.sizes.get(n, 0) for n in names], dtype=np.float64)
        # A pinned model (queued work needs it) counts as used right now: evicted last, and never
        # while it is pinned (its stamp is +inf, and the budget check below stops before it).
        stamp = np.array([np.inf if self.pinned.get(n, 0) > 0 else self.cached[n] for n in names])
        keep = lru_evict(np.ones(len(names), bool), stamp, size, float(self.budget_bytes))
        evicted = [n for n, k in zip(names, keep) if not k and self.pinned.get(n, 0) == 0]
        for n in evicted:
            del self.cached[n]
        return evicted

    def pin(self, name: str) -> None:
        self.pinned[name] = self.pinned.get(name, 0) + 1

    def unpin(self, name: str) -> None:
        if self.pinned.get(name, 0) > 0:
            self.pinned[name] -= 1


class EdgeServerCore:
    """State and rules of one edge server; thread-safe (the node calls it from its executor
    threads and its worker thread)."""

    def __init__(self, server_id: str, cpu_hz: float, cache: ModelCache, *, forwarding: bool = True,
                 inter_link_bps: float = 400e6, download_bps: float = float("inf"), max_hops: int = 1,
                 clock: Callable[[], float] | None = None):
        import time

        if cpu_hz <= 0:
            raise ValueError(f"cpu_hz must be positive, got {cpu_hz}")
        self.server_id = server_id
        self.cpu_hz = float(cpu_hz)
        self.cache = cache
        self.forwarding = forwarding
        self.inter_link_bps = float(inter_link_bps)
        self.download_bps = float(download_bps)  # cloud -> this server, for the download-time estimate
        self.max_hops = max_hops
        self.clock = clock or time.time
        self.peers: dict[str, PeerStatus] = {}
        self.queue: deque[EdgeTask] = deque()
        # sum of the queued tasks' W / f, s: kept as tasks enter and leave the queue, because summing
        # the queue at every admission was quadratic in its length (half of a busy server's CPU)
        self._queued_s = 0.0
        self.running: EdgeTask | None = None
        self.running_until_s = 0.0
        self.downloading: set[str] = set()
        self.fetch_errors: dict[str, str] = {}  # model -> why its last download failed (for the tasks' results)
        self.lock = threading.Condition()
        self.counters = {"accepted": 0, "rejected": 0, "forwarded": 0, "to_cloud": 0, "done": 0,
                         "deadline_missed": 0, "failed": 0, "downloads": 0, "download_failures": 0, "hits": 0}
        self.busy_s = 0.0
        self.started_at_s = self.clock()

    # -- estimates ----------------------------------------------------------------------------
    def backlog_s(self, now: float | None = None) -> float:
        """Work queued or running, as time to drain it at cpu_hz, s."""
        now = self.clock() if now is None else now
        with self.lock:
            rest = max(self.running_until_s - now, 0.0) if self.running is not None else 0.0
            return rest + self._queued_s

    def peer_finish_s(self, peer: PeerStatus, task: EdgeTask, now: float) -> float:
        """Estimated finish at a peer from its last status (the simulator's forwarding rule)."""
        backlog = max(peer.backlog_s - (now - peer.stamp_s), 0.0)
        transfer = task.share * task.input_bits / min(self.inter_link_bps, peer.inter_link_bps)
        return now + max(transfer, backlog) + float(compute_delay_s(task.work_cycles, peer.cpu_hz))

    # -- admission ----------------------------------------------------------------------------
    def admit(self, task: EdgeTask) -> Admission:
        """Decide what happens to a task handed to this server (spec §1.4)."""
        now = self.clock()
        task.received_at_s = now
        if task.work_cycles < 0 or not (0.0 < task.share <= 1.0):
            return self._reject(f"invalid task {task.task_id}: share {task.share} and work {task.work_cycles} cycles")
        if task.model_name not in self.cache.sizes:
            return self._reject(f"model '{task.model_name}' is not in the catalog")
        with self.lock:
            hit = self.cache.has(task.model_name)
            own_ok = hit or task.download or task.model_name in self.downloading
            # The model is usable now (hit, or a download already running), or after a fresh
            # download of X / r_c (MATO eq. 7), as the simulator's own_avail.
            ready = now if hit or task.model_name in self.downloading else \
                now + 8.0 * self.cache.sizes[task.model_name] / self.download_bps
            own_finish = max(now + self.backlog_s(now), ready) + float(compute_delay_s(task.work_cycles, self.cpu_hz)) \
                if own_ok else float("inf")
            best_peer, best_finish = None, own_finish
            # With forwarding off the simulator never looks at peers: a miss without download goes to the cloud.
            if self.forwarding and task.hops < self.max_hops:
                for peer in self.peers.values():
                    if task.model_name in peer.cached:
                        f = self.peer_finish_s(peer, task, now)
                        if f < best_finish:
                            best_peer, best_finish = peer, f
            if best_peer is not None:
                self.counters["forwarded"] += 1
                return Admission(True, f"forward:{best_peer.server_id}", "",
                                 max(best_finish - now - float(compute_delay_s(task.work_cycles, best_peer.cpu_hz)), 0.0))
            if not own_ok:
                self.counters["to_cloud"] += 1
                return Admission(True, "cloud", f"model '{task.model_name}' is not cached here or at a peer")
            wait = self.backlog_s(now)
            task.cache_hit = hit
            action, starts = "queue", False
            if not hit:
                task.downloaded = True
                action = "download"
                # Registered here, under the lock and before the worker is woken: were it registered
                # after admit returns, an idle worker could take the task in between, see its model
                # neither cached nor downloading, and fail it while the download goes ahead.
                starts = task.model_name not in self.downloading
                self.downloading.add(task.model_name)
            self.cache.pin(task.model_name)
            self.queue.append(task)
            self._queued_s += float(compute_delay_s(task.work_cycles, self.cpu_hz))
            self.counters["accepted"] += 1
            self.counters["hits"] += int(hit)
            self.lock.notify_all()
            return Admission(True, action, "", wait, starts)

    def _reject(self, reason: str) -> Admission:
        with self.lock:
            self.counters["rejected"] += 1
        return Admission(False, "reject", reason)

    def download_finished(self, name: str, ok: bool, error: str = "") -> list[str]:
        """Record a finished download (``error``: why it failed); returns evicted models (to delete
        from disk). Every download the core registered must end here, or its tasks wait for it."""
        with self.lock:
            self.downloading.discard(name)
            evicted: list[str] = []
            if ok:
                evicted = self.cache.add(name)
                self.counters["downloads"] += 1
                self.fetch_errors.pop(name, None)
            else:
                self.counters["download_failures"] += 1
                self.fetch_errors[name] = error
            self.lock.notify_all()
            return evicted

    # -- execution ----------------------------------------------------------------------------
    def next_task(self, timeout_s: float) -> EdgeTask | None:
        """Block until a task is at the head of the queue (FIFO) or the timeout passes."""
        with self.lock:
            if not self.queue:
                self.lock.wait(timeout_s)
            if not self.queue:
                return None
            task = self.queue.popleft()
            # reset when empty so float rounding cannot accumulate over a long run
            self._queued_s = self._queued_s - float(compute_delay_s(task.work_cycles, self.cpu_hz)) if self.queue else 0.0
            self.running = task
            self.running_until_s = self.clock() + float(compute_delay_s(task.work_cycles, self.cpu_hz))
            return task

    def drain_queue(self) -> list[EdgeTask]:
        """Take every queued (not running) task out, counted failed and unpinned: the caller ends them
        (the server is being deactivated and will not run them)."""
        with self.lock:
            tasks = list(self.queue)
            self.queue.clear()
            self._queued_s = 0.0
            for task in tasks:
                self.cache.unpin(task.model_name)
                self.counters["failed"] += 1
            self.lock.notify_all()
            return tasks

    def fetch_error(self, name: str) -> str:
        """Why the last download of ``name`` failed; "" when it did not (or gave no reason)."""
        with self.lock:
            return self.fetch_errors.get(name, "")

    def wait_for_model(self, task: EdgeTask, until_s: float) -> bool:
        """Wait until the task's model is cached (a download finishing) or ``until_s``."""
        with self.lock:
            while not self.cache.has(task.model_name):
                if task.model_name not in self.downloading:
                    return False
                left = until_s - self.clock()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.5))
            self.cache.touch(task.model_name)
            return True

    def finish(self, task: EdgeTask, outcome: str, busy_s: float) -> None:
        with self.lock:
            self.running = None
            self.running_until_s = 0.0
            self.cache.unpin(task.model_name)
            self.busy_s += busy_s
            self.counters[outcome] += 1

    def compute_s(self, task: EdgeTask) -> float:
        return float(compute_delay_s(task.work_cycles, self.cpu_hz))

    # -- status -------------------------------------------------------------------------------
    def update_peer(self, peer: PeerStatus) -> None:
        if peer.server_id != self.server_id:
            with self.lock:
                self.peers[peer.server_id] = peer

    def status(self) -> dict:
        now = self.clock()
        with self.lock:
            elapsed = max(now - self.started_at_s, 1e-9)
            return {"backlog_s": self.backlog_s(now),
                    "queue_length": len(self.queue) + (1 if self.running is not None else 0),
                    "cached_models": sorted(self.cache.cached), "storage_used_bytes": self.cache.used_bytes(),
                    "storage_budget_bytes": int(self.cache.budget_bytes), "load": min(self.busy_s / elapsed, 1.0),
                    "cpu_hz": self.cpu_hz, "counters": dict(self.counters)}
