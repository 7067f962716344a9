"""Unit tests of the ROS-free logic of the ROS 2 edge stack (no rclpy needed).

- aigc_offload.edge_core: ModelCache (LRU under a storage budget, pinning) and EdgeServerCore
  (admission: queue / download / forward / cloud / reject, the forwarding estimate, FIFO, backlog,
  downloads, finish).
- aigc_offload.gateway_core: GatewayCore (validation, decisions through the simulator's live_view,
  the allowed mask of silent servers, its own queue estimates, device energy, result tracking).
- aigc_offload.deployment: load_deployment, draw_plant, node_specs, params_file_text.

Every number is worked by hand in the comments; clocks are injected fakes.
"""

from __future__ import annotations

import dataclasses
import re
import threading

import numpy as np
import pytest
import yaml

pytest.importorskip("aigc_offload.edge_core", reason="pip install -e ros2_ws/src/aigc_offload into the venv")

from aigc_offload.deployment import (  # noqa: E402
    Deployment,
    DeploymentError,
    draw_plant,
    load_deployment,
    node_specs,
    params_file_text,
)
from aigc_offload.edge_core import EdgeServerCore, EdgeTask, ModelCache, PeerStatus  # noqa: E402
from aigc_offload.gateway_core import (  # noqa: E402
    DEADLINE_MISSED,
    DONE,
    FAILED,
    PART_LOCAL,
    PART_REMOTE,
    PART_WHOLE,
    TARGET_CLOUD,
    TARGET_EDGE,
    TARGET_LOCAL,
    GatewayCore,
    Request,
    RequestError,
)
from policies.heuristics import make_policy  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.scenarios.base import OffloadDecision, Policy  # noqa: E402
from policies.scenarios.factory import LiveState, LiveTask  # noqa: E402


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# ============================================================================================
# ModelCache
# ============================================================================================
SIZES = {"a": 100, "b": 200, "c": 300, "d": 150}


def test_model_cache_lru_eviction_order_and_used_bytes():
    c = ModelCache(budget_bytes=500, sizes=dict(SIZES))
    assert c.add("a") == [] and c.used_bytes() == 100  # stamp a=1
    assert c.add("b") == [] and c.used_bytes() == 300  # stamp b=2
    c.touch("a")  # a=3: now b is the least recently used
    # add c (stamp 4): 100 + 200 + 300 = 600 > 500; LRU order b(2), a(3), c(4): drop b -> 400 <= 500
    assert c.add("c") == ["b"]
    assert set(c.cached) == {"a", "c"} and c.used_bytes() == 400
    # add d (stamp 5): 400 + 150 = 550 > 500; LRU order a(3), c(4), d(5): drop a -> 450
    assert c.add("d") == ["a"]
    assert set(c.cached) == {"c", "d"} and c.used_bytes() == 450
    assert c.has("c") and not c.has("a")
    # touching a model that is not cached does not add it
    c.touch("b")
    assert not c.has("b")


def test_model_cache_evicts_several_oldest_first():
    c = ModelCache(budget_bytes=450, sizes=dict(SIZES))
    for n in ("a", "d", "b"):  # 100 + 150 + 200 = 450 fits exactly
        assert c.add(n) == []
    # add c: 450 + 300 = 750; drop a (-> 650), d (-> 500), b (-> 300 <= 450): oldest first
    assert c.add("c") == ["a", "d", "b"]
    assert set(c.cached) == {"c"} and c.used_bytes() == 300


def test_model_cache_pinned_model_is_never_evicted():
    c = ModelCache(budget_bytes=500, sizes=dict(SIZES))
    c.add("a")  # a=1, the oldest
    c.pin("a")
    c.add("b")  # b=2
    # add c: 600 > 500; a is pinned (stamp +inf): order b(2), c(3), a(inf): drop b -> 400
    assert c.add("c") == ["b"]
    assert set(c.cached) == {"a", "c"}
    c.pin("c")
    # add d: 550 > 500, a and c pinned: the only unpinned model is d itself, dropped -> 400
    assert c.add("d") == ["d"]
    assert set(c.cached) == {"a", "c"}
    # Pinned models alone above the budget: nothing unpinned to drop, the pinned ones stay.
    small = ModelCache(budget_bytes=350, sizes=dict(SIZES))
    small.pin("a")
    small.pin("c")
    small.add("a")
    assert small.add("c") == [] and small.used_bytes() == 400  # 100 + 300 > 350, but both pinned
    # Unpinning makes a model evictable again (two pins need two unpins).
    c.pin("a")
    c.unpin("a")
    c.unpin("a")
    c.unpin("a")  # one more unpin than pins: clamps at 0
    assert c.pinned["a"] == 0
    c.unpin("c")
    # add b (stamp 6): 400 + 200 = 600; order a(1), c(3), b(6): drop a -> 500 <= 500
    assert c.add("b") == ["a"]
    assert set(c.cached) == {"b", "c"} and c.used_bytes() == 500


# ============================================================================================
# EdgeServerCore
# ============================================================================================
GHZ10 = 10e9


def etask(task_id="t1", model="a", *, share=1.0, work=2e9, input_bits=8e6, download=False, hops=0,
          deadline_at=200.0) -> EdgeTask:
    return EdgeTask(task_id=task_id, device_id="plc01", origin="test", model_name=model, task_kind=0,
                    units=100, share=share, work_cycles=work, input_bits=int(input_bits), created_at_s=100.0,
                    deadline_at_s=deadline_at, download=download, hops=hops)


def make_core(cached=("a",), *, cpu_hz=GHZ10, budget=10_000, clock=None, **kw) -> EdgeServerCore:
    cache = ModelCache(budget_bytes=budget, sizes=dict(SIZES))
    for n in cached:
        cache.add(n)
    return EdgeServerCore("edge0", cpu_hz, cache, clock=clock or FakeClock(100.0), **kw)


def test_recent_acks_answer_a_repeated_hand_off_as_the_first_time_and_keep_only_the_newest():
    from aigc_offload.edge_core import Admission, RecentAcks

    acks = RecentAcks(capacity=2)
    first = Admission(True, "download", "", 0.25)
    acks.put("t1", 0, first)
    acks.put("t2", 0, Admission(False, "reject", "queue full"))  # a refusal is judged again next time
    assert acks.get("t1", 0) == first and acks.get("t2", 0) is None
    assert acks.get("t1", 1) is None  # forwarded back with another hop count: a new hand-off
    acks.put("t3", 0, Admission(True, "queue"))
    acks.put("t4", 0, Admission(True, "cloud"))
    assert acks.get("t1", 0) is None and acks.get("t4", 0).action == "cloud"
    assert acks.repeats == 2


def test_a_forgotten_ack_is_judged_again():
    from aigc_offload.edge_core import Admission, RecentAcks

    acks = RecentAcks()
    acks.put("t1", 0, Admission(True, "queue"))
    acks.put("t1", 1, Admission(True, "queue"))
    acks.forget("t1", 0)
    acks.forget("never", 0)  # nothing to forget: no error
    assert acks.get("t1", 0) is None and acks.get("t1", 1).action == "queue"


def test_drain_queue_takes_the_waiting_tasks_not_the_running_one():
    core = make_core(("a",))
    t1, t2, t3 = (etask(f"t{i}", model="a") for i in (1, 2, 3))
    for t in (t1, t2, t3):
        assert core.admit(t).accepted
    assert core.next_task(0.0) is t1  # running
    assert core.drain_queue() == [t2, t3]
    assert not core.queue and core.backlog_s(100.0) == pytest.approx(0.2)  # only t1's remaining work
    assert core.counters["failed"] == 2 and core.cache.pinned["a"] == 1  # t1 keeps its pin
    core.finish(t1, "done", 0.2)
    assert core.cache.pinned["a"] == 0 and core.drain_queue() == []


def test_admit_cache_hit_queues():
    core = make_core(("a",))
    t = etask(model="a")
    adm = core.admit(t)
    assert adm.accepted and adm.action == "queue" and adm.reason == "" and adm.expected_wait_s == 0.0
    assert t.cache_hit and not t.downloaded and t.received_at_s == 100.0
    assert core.counters["accepted"] == 1 and core.counters["hits"] == 1
    assert core.cache.pinned["a"] == 1 and list(core.queue) == [t]
    # a second task waits for the first: 2e9 cycles / 10 GHz = 0.2 s
    adm2 = core.admit(etask("t2", model="a"))
    assert adm2.action == "queue" and adm2.expected_wait_s == pytest.approx(0.2)


def test_admit_miss_with_download_and_download_dedup():
    core = make_core(("a",))
    t1, t2 = etask("t1", model="b", download=True), etask("t2", model="b", download=True)
    a1 = core.admit(t1)
    assert a1.accepted and a1.action == "download"
    assert t1.downloaded and not t1.cache_hit and core.counters["hits"] == 0
    assert a1.starts_download is True  # the first one starts the download
    a2 = core.admit(t2)
    assert a2.action == "download"
    assert a2.starts_download is False  # one download per model at a time
    assert core.downloading == {"b"}
    # b is pinned twice (two queued tasks need it), so finishing the download keeps it
    assert core.cache.pinned["b"] == 2
    assert core.download_finished("b", True) == []
    assert core.cache.has("b") and core.downloading == set() and core.counters["downloads"] == 1
    # once cached, a task for b is a hit and needs no download
    t3 = etask("t3", model="b")
    a3 = core.admit(t3)
    assert a3.action == "queue" and t3.cache_hit and not a3.starts_download


def test_admit_registers_the_download_before_the_worker_can_take_the_task():
    """admit() queues the task and wakes the worker; the node starts the download thread only after
    admit returns. An idle worker that takes the task in that gap must find the download registered
    (and wait for it), not fail the task with "could not fetch model" while the download goes ahead."""
    in_wait = threading.Event()

    class Clock(FakeClock):  # wait_for_model reads the clock only while it waits for a running download
        def __call__(self) -> float:
            if threading.current_thread() is not threading.main_thread():
                in_wait.set()
            return self.t

    core = make_core(("a",), clock=Clock(100.0))
    t = etask(model="b", download=True)
    adm = core.admit(t)
    assert adm.action == "download"
    # the worker, before the node has done anything with the admission
    assert core.next_task(0.01) is t
    got: list[bool] = []
    worker = threading.Thread(target=lambda: got.append(core.wait_for_model(t, until_s=1e12)), daemon=True)
    worker.start()
    while worker.is_alive() and not in_wait.wait(0.01):
        pass
    assert in_wait.is_set(), f"the worker gave the task up before its download started: {got}"
    assert adm.starts_download and core.downloading == {"b"}
    core.download_finished("b", True)  # the node's download thread, started after admit returned
    worker.join(10)
    assert got == [True]


def test_admit_miss_without_download_forwards_to_a_holder():
    core = make_core(("a",))
    core.update_peer(PeerStatus("edge1", GHZ10, 0.0, frozenset({"b"}), stamp_s=100.0))
    adm = core.admit(etask(model="b", download=False))
    assert adm.accepted and adm.action == "forward:edge1"
    # wait at edge1: max(transfer 8e6 / 400e6 = 0.02, backlog 0) = 0.02 s
    assert adm.expected_wait_s == pytest.approx(0.02)
    assert core.counters["forwarded"] == 1 and core.counters["accepted"] == 0 and not core.queue


def test_admit_no_holder_goes_to_cloud():
    core = make_core(("a",))
    core.update_peer(PeerStatus("edge1", GHZ10, 0.0, frozenset({"c"}), stamp_s=100.0))
    adm = core.admit(etask(model="b", download=False))
    assert adm.accepted and adm.action == "cloud"
    assert adm.reason == "model 'b' is not cached here or at a peer"
    assert core.counters["to_cloud"] == 1 and not core.queue and core.cache.pinned.get("b", 0) == 0


def test_update_peer_ignores_own_status():
    core = make_core(("a",))
    core.update_peer(PeerStatus("edge0", GHZ10, 0.0, frozenset({"b"}), stamp_s=100.0))
    assert core.peers == {}
    assert core.admit(etask(model="b")).action == "cloud"


@pytest.mark.parametrize("kw, reason", [
    (dict(model="zzz"), "model 'zzz' is not in the catalog"),
    (dict(share=0.0), "invalid task t1: share 0.0 and work 2000000000.0 cycles"),
    (dict(share=1.5), "invalid task t1: share 1.5 and work 2000000000.0 cycles"),
    (dict(share=-0.5), "invalid task t1: share -0.5 and work 2000000000.0 cycles"),
    (dict(work=-1.0), "invalid task t1: share 1.0 and work -1.0 cycles"),
])
def test_admit_rejects_with_a_sentence(kw, reason):
    core = make_core(("a",))
    adm = core.admit(etask(**kw))
    assert not adm.accepted and adm.action == "reject" and adm.reason == reason
    assert core.counters["rejected"] == 1 and core.counters["accepted"] == 0 and not core.queue


def test_forwarding_fast_idle_peer_beats_busy_local():
    clock = FakeClock(100.0)
    core = make_core(("a",), clock=clock)  # 10 GHz
    for i in range(3):  # local backlog: 3 x 2e10 / 1e10 = 6 s
        assert core.admit(etask(f"q{i}", model="a", work=2e10)).action == "queue"
    assert core.backlog_s() == pytest.approx(6.0)
    # Peer: 40 GHz, reported backlog 0.5 s at 99.8 -> aged 0.5 - (100 - 99.8) = 0.3 s; its link 200 Mbit/s.
    peer = PeerStatus("edge1", 40e9, 0.5, frozenset({"a"}), stamp_s=99.8, inter_link_bps=200e6)
    core.update_peer(peer)
    # Offloaded half of a task: share 0.5 of 4e7 bits, eta W = 1e10 cycles.
    t = etask("fwd", model="a", share=0.5, work=1e10, input_bits=4e7)
    # transfer = 0.5 * 4e7 / min(400e6, 200e6) = 2e7 / 2e8 = 0.1 s
    # finish at edge1 = 100 + max(0.1, 0.3) + 1e10 / 4e10 = 100 + 0.3 + 0.25 = 100.55
    assert core.peer_finish_s(peer, t, 100.0) == pytest.approx(100.55)
    # an idle peer: transfer dominates: 100 + max(0.1, 0) + 0.25 = 100.35
    idle = dataclasses.replace(peer, backlog_s=0.0)
    assert core.peer_finish_s(idle, t, 100.0) == pytest.approx(100.35)
    # here: 100 + 6 + 1e10 / 1e10 = 107 > 100.55 -> forward
    adm = core.admit(t)
    assert adm.action == "forward:edge1"
    assert adm.expected_wait_s == pytest.approx(0.3)  # 100.55 - 100 - 0.25
    assert len(core.queue) == 3  # not queued here


def test_forwarding_picks_the_earliest_holder_and_keeps_ties_local():
    core = make_core(("a",))  # idle, 10 GHz: own finish = 100 + 0 + 2e9 / 1e10 = 100.2
    # slow peer: 100 + max(0.02, 0) + 2e9 / 5e9 = 100.42 > 100.2: stay
    core.update_peer(PeerStatus("slow", 5e9, 0.0, frozenset({"a"}), stamp_s=100.0))
    assert core.admit(etask("t1", model="a")).action == "queue"
    # now the local backlog is 0.2 s: own = 100 + 0.2 + 0.2 = 100.4
    # fast peer: 100 + max(0.02, 0.08) + 2e9 / 2e10 = 100.18; slow: 100.42 -> fast wins
    core.update_peer(PeerStatus("fast", 20e9, 0.08, frozenset({"a"}), stamp_s=100.0))
    assert core.admit(etask("t2", model="a")).action == "forward:fast"
    # A tie stays here: own = 100 + 0.2 + 0.2 = 100.4; peer 10 GHz with backlog 0.2 s: 100 + 0.2 + 0.2 = 100.4
    tie = make_core(("a",))
    tie.admit(etask("t1", model="a"))
    tie.update_peer(PeerStatus("twin", GHZ10, 0.2, frozenset({"a"}), stamp_s=100.0))
    assert tie.admit(etask("t2", model="a")).action == "queue"


def test_hops_at_max_never_forward():
    core = make_core(("a",), max_hops=1)
    for i in range(3):  # 6 s of local backlog
        core.admit(etask(f"q{i}", model="a", work=2e10))
    core.update_peer(PeerStatus("edge1", 40e9, 0.0, frozenset({"a", "b"}), stamp_s=100.0))
    # the same task with hops 0 would go to edge1 (100.52 < 108), with hops 1 it stays
    assert core.admit(etask("h1", model="a", work=2e10, hops=1)).action == "queue"
    assert core.admit(etask("h0", model="a", work=2e10, hops=0)).action == "forward:edge1"
    # a miss without download and hops at the limit goes to the cloud, although edge1 holds b
    assert core.admit(etask("h2", model="b", hops=1)).action == "cloud"
    assert core.admit(etask("h3", model="b", hops=2)).action == "cloud"
    assert core.counters["forwarded"] == 1 and core.counters["to_cloud"] == 2


def test_forwarding_disabled_keeps_a_hit_local():
    core = make_core(("a",), forwarding=False)
    for i in range(3):
        core.admit(etask(f"q{i}", model="a", work=2e10))
    core.update_peer(PeerStatus("edge1", 40e9, 0.0, frozenset({"a"}), stamp_s=100.0))
    assert core.admit(etask("x", model="a", work=2e10)).action == "queue"


def test_forwarding_disabled_miss_without_download_goes_to_cloud_like_the_simulator():
    # factory.py price(): without edge_forwarding, placed = edge_t & isfinite(own_avail); a miss with
    # beta = 0 has own_avail = inf, so the task goes to the cloud ("beta = 0: the edge forwards to the cloud").
    core = make_core(("a",), forwarding=False)
    core.update_peer(PeerStatus("edge1", GHZ10, 0.0, frozenset({"b"}), stamp_s=100.0))
    assert core.admit(etask(model="b", download=False)).action == "cloud"


def test_forwarding_counts_the_download_time_of_a_miss():
    # The factory's numbers: report-s, 90 MB,
    # download at 500 Mbit/s: 90 * 8e6 / 500e6 = 1.44 s. Simulator: own est = max(up, 1.44) + 0.2,
    # peer est = up + 0.02 + 0.2 -> the simulator forwards to edge1.
    cache = ModelCache(budget_bytes=400_000_000, sizes={"report-s": 90_000_000})
    core = EdgeServerCore("edge0", GHZ10, cache, download_bps=500e6, clock=FakeClock(100.0))
    core.update_peer(PeerStatus("edge1", GHZ10, 0.0, frozenset({"report-s"}), stamp_s=100.0))
    assert core.admit(etask(model="report-s", download=True)).action == "forward:edge1"


def test_backlog_is_the_sum_of_work_over_cpu_and_next_task_is_fifo():
    clock = FakeClock(100.0)
    core = make_core(("a",), clock=clock)  # 10 GHz
    works = {"t1": 1e10, "t2": 3e10, "t3": 5e9}
    for tid, w in works.items():
        assert core.admit(etask(tid, model="a", work=w)).accepted
    # 1e10/1e10 + 3e10/1e10 + 5e9/1e10 = 1 + 3 + 0.5 = 4.5 s
    assert core.backlog_s() == pytest.approx(4.5)
    assert core.status()["queue_length"] == 3 and core.status()["backlog_s"] == pytest.approx(4.5)
    t = core.next_task(0.01)
    assert t.task_id == "t1" and core.running is t and core.running_until_s == pytest.approx(101.0)
    clock.t = 100.4  # running: 101 - 100.4 = 0.6 s left + 3 + 0.5 = 4.1 s
    assert core.backlog_s() == pytest.approx(4.1)
    clock.t = 102.0  # overdue running task counts 0
    assert core.backlog_s() == pytest.approx(3.5)
    core.finish(t, "done", 1.0)
    assert [core.next_task(0.01).task_id for _ in range(2)] == ["t2", "t3"]
    clock.t = 1e4  # the running t3 is overdue and the queue is empty: exactly nothing left (no rounding residue)
    assert core.backlog_s() == 0.0
    assert core.next_task(0.01) is None  # empty queue: timeout, None


def test_compute_s_is_work_over_cpu():
    core = make_core(("a",), cpu_hz=25e9)
    assert core.compute_s(etask(work=5e9)) == pytest.approx(0.2)  # 5e9 / 25e9
    with pytest.raises(ValueError, match="cpu_hz must be positive"):
        make_core(("a",), cpu_hz=0.0)


def test_wait_for_model_false_when_the_download_failed():
    core = make_core(("a",))
    t = etask(model="b", download=True)
    assert core.admit(t).starts_download
    assert core.download_finished("b", False, "Model b: disk full.") == []
    assert core.counters["download_failures"] == 1 and core.counters["downloads"] == 0
    assert not core.cache.has("b") and "b" not in core.downloading
    assert core.next_task(0.01) is t
    assert core.wait_for_model(t, until_s=1e12) is False  # returns at once, no waiting
    assert core.fetch_error("b") == "Model b: disk full."  # what the worker tells the device
    # the next miss downloads again (the failed download ended), and a success clears the error
    t2 = etask("t2", model="b", download=True)
    assert core.admit(t2).starts_download and core.downloading == {"b"}
    core.download_finished("b", True)
    assert core.fetch_error("b") == ""


def test_wait_for_model_true_after_a_download_finishes_in_another_thread():
    core = make_core(("a",))
    t = etask(model="b", download=True)
    assert core.admit(t).starts_download
    timer = threading.Timer(0.05, core.download_finished, args=("b", True))
    timer.start()
    try:
        assert core.wait_for_model(t, until_s=1e12) is True  # fake clock never passes until_s
    finally:
        timer.join(5)
    assert core.cache.has("b") and core.counters["downloads"] == 1
    # a hit waits for nothing; a model neither cached nor downloading cannot be waited for
    assert core.wait_for_model(etask(model="a"), until_s=0.0) is True
    assert core.wait_for_model(etask(model="c"), until_s=1e12) is False


def test_wait_for_model_false_when_the_deadline_passed():
    clock = FakeClock(100.0)
    core = make_core(("a",), clock=clock)
    t = etask(model="b", download=True)
    core.admit(t)
    assert core.wait_for_model(t, until_s=99.0) is False  # until_s already passed, download running


def test_finish_updates_counters_and_unpins():
    clock = FakeClock(100.0)
    core = make_core(("a",), clock=clock)
    t1, t2 = etask("t1", model="a"), etask("t2", model="a")
    core.admit(t1)
    core.admit(t2)
    assert core.cache.pinned["a"] == 2
    assert core.next_task(0.01) is t1
    core.finish(t1, "done", 0.2)
    assert core.running is None and core.running_until_s == 0.0
    assert core.cache.pinned["a"] == 1 and core.counters["done"] == 1 and core.busy_s == pytest.approx(0.2)
    assert core.next_task(0.01) is t2
    core.finish(t2, "deadline_missed", 0.1)
    assert core.cache.pinned["a"] == 0 and core.counters["deadline_missed"] == 1
    clock.t = 101.0  # load = busy 0.3 s / 1 s elapsed since start
    s = core.status()
    assert s["load"] == pytest.approx(0.3) and s["queue_length"] == 0 and s["backlog_s"] == 0.0
    assert s["cached_models"] == ["a"] and s["storage_used_bytes"] == 100 and s["storage_budget_bytes"] == 10_000
    # a was unpinned by finish(): a download may now evict it.
    # download c (300): 100 + 300 = 400 > 350; LRU a(1), c(2): drop a -> 300
    core.cache.budget_bytes = 350
    assert core.download_finished("c", True) == ["a"]
    # while a queued task pins a, the same download keeps a: order c(2), a(inf) -> c itself goes
    small = make_core(("a",), budget=350)
    small.admit(etask("t", model="a"))
    assert small.download_finished("c", True) == ["c"]
    assert small.cache.has("a") and not small.cache.has("c")


def test_download_finished_evicts_unpinned_lru():
    core = make_core(("a", "d"), budget=500)  # a=1, d=2: 250 bytes
    # download c (300): 550 > 500; LRU a(1), d(2), c(3): drop a -> 450
    assert core.download_finished("c", True) == ["a"]
    assert sorted(core.cache.cached) == ["c", "d"]


# ============================================================================================
# GatewayCore
# ============================================================================================
EDGE_LISTS = ("edge_xy_m", "edge_cpu_ghz", "edge_storage_mb", "inter_link_mbps")


ID: dict[int, str] = {}  # device index -> device id of the drawn plant (ids are the plant's business)


@pytest.fixture(scope="module")
def plant2():
    plant = draw_plant(Deployment(preset="factory", num_edge_servers=2))
    ID.update({d.index: d.device_id for d in plant.devices})
    return plant


@pytest.fixture(scope="module")
def sim2():
    # as edge_gateway.py's on_configure: the gateway's simulator has the plant's 2 edge servers
    p = make_simulator("factory", expect="factory").preset
    return make_simulator("factory", {k: [list(v) if isinstance(v, tuple) else v for v in getattr(p, k)[:2]]
                                      for k in EDGE_LISTS}, expect="factory")


@pytest.fixture(scope="module")
def hand_plant(plant2):
    """plant2 with round numbers for two devices: controller 0 at 2 GHz, uplinks 20 / 10 Mbit/s;
    camera 16 at 4 GHz, uplinks 25 / 50 Mbit/s."""
    devs = list(plant2.devices)
    assert devs[0].kind == "controller" and devs[16].kind == "camera"
    devs[0] = dataclasses.replace(devs[0], cpu_ghz=2.0, uplink_mbps=(20.0, 10.0))
    devs[16] = dataclasses.replace(devs[16], cpu_ghz=4.0, uplink_mbps=(25.0, 50.0))
    return dataclasses.replace(plant2, devices=tuple(devs))


class FixedPolicy(Policy):
    """Always the same (target, share, download)."""

    name = "fixed"

    def __init__(self, target: int, share: float | None = None, download: bool | None = None):
        self.t, self.s, self.d = target, share, download

    def decide(self, view):
        n = view.n
        return OffloadDecision(target=np.full(n, self.t, dtype=np.int64),
                               share=None if self.s is None else np.full(n, float(self.s)),
                               download=None if self.d is None else np.full(n, bool(self.d)))


class Spy(Policy):
    """Delegates to another policy and records the views it got."""

    name = "spy"

    def __init__(self, inner: Policy):
        self.inner, self.views = inner, []

    def reset(self, rng, oracle=None):
        super().reset(rng, oracle)
        self.inner.reset(rng, oracle)

    def decide(self, view):
        self.views.append(view)
        return self.inner.decide(view)


def make_gw(sim, plant, policy, clock=None, **kw) -> GatewayCore:
    if isinstance(policy, str):
        policy = make_policy(policy, sim)
    return GatewayCore(sim, plant, policy, getattr(policy, "name", "p"), clock=clock or FakeClock(100.0), **kw)


def req(task_id="t1", device=0, kind="report", model="report-s", units=100, input_bits=4_000_000,
        output_bits=50_000, deadline=2.5, created=100.0) -> Request:
    """A request; ``device`` is a device index of the plant (or a literal id string)."""
    dev_id = ID[device] if isinstance(device, int) else device
    return Request(task_id, dev_id, "test", kind, model, units, input_bits, output_bits, deadline, created)


CATALOG = "report-s, report-m, report-l, report-xl, defect-s, defect-m, defect-l, defect-xl"


@pytest.mark.parametrize("kw, message", [
    (dict(task_id=""), "task_id is empty"),
    (dict(device="line9/plc99"), "device 'line9/plc99' is not part of this deployment"),
    (dict(model="gpt-9"), f"model 'gpt-9' is not in the catalog ({CATALOG})"),
    (dict(kind="image", model="report-s"), "model 'report-s' makes reports, the task asks for an image"),
    (dict(kind="report", model="defect-s"), "model 'defect-s' makes images, the task asks for a report"),
    (dict(units=0), "output_tokens must be positive"),
    (dict(kind="image", model="defect-s", units=-3), "denoising_steps must be positive"),
    (dict(deadline=0.0), "deadline_s must be positive, got 0.0"),
    (dict(deadline=-1.0), "deadline_s must be positive, got -1.0"),
    (dict(deadline=float("nan")), "deadline_s must be positive, got nan"),
    # a direct ROS publisher has no device schema in front of it: the schemas' bound (0 < d <= 3600) holds here too
    (dict(deadline=float("inf")), "deadline_s must be at most 3600 s, got inf"),
    (dict(deadline=1e300), "deadline_s must be at most 3600 s, got 1e+300"),
    (dict(deadline=3600.5), "deadline_s must be at most 3600 s, got 3600.5"),
    (dict(deadline=2.5, created=100.0 + 1e6), "created_at is 1000000 s in the future, more than 3600 s ahead "
                                              "of the gateway's clock"),
])
def test_gateway_refuses_bad_requests_with_a_sentence(sim2, plant2, kw, message):
    gw = make_gw(sim2, plant2, "local")
    with pytest.raises(RequestError) as exc:
        gw.decide(req(**kw))
    assert str(exc.value) == message
    assert gw.tracked == {} and gw.counters["requests"] == 0 and gw.counters["decided"] == 0


def test_the_deadline_bound_is_the_device_schemas_and_a_task_at_it_is_tracked(sim2, plant2):
    from aigc_offload.gateway_core import MAX_DEADLINE_S
    from mqtt_bridge.schemas import TaskRequest as DeviceRequest

    assert DeviceRequest.model_json_schema()["properties"]["deadline_s"]["maximum"] == MAX_DEADLINE_S == 3600
    gw = make_gw(sim2, plant2, "local")
    gw.decide(req("max", deadline=3600.0, created=110.0))  # 10 s of device clock ahead: still within the bound
    assert gw.tracked["max"].deadline_at_s == 3710.0


def test_a_result_with_an_unknown_state_changes_nothing_and_the_sweep_still_ends_the_task(sim2, hand_plant):
    """A TaskResult with state 9 used to untrack the task and then fail on the counter: no terminal state ever."""
    clock = FakeClock(100.0)
    gw = make_gw(sim2, hand_plant, "local", clock, result_grace_s=0.5)
    gw.decide(req("s"))
    before = dict(gw.counters)
    with pytest.raises(ValueError, match=r"^result state 9 is none of DONE, REJECTED, FAILED, DEADLINE_MISSED"):
        gw.on_result("s", PART_WHOLE, 9, "", "device:d0")
    assert gw.tracked["s"].pending == {PART_WHOLE} and gw.tracked["s"].results == [] and gw.counters == before
    with pytest.raises(KeyError):  # _terminate itself: the lookup comes before the task is untracked
        gw._terminate(gw.tracked["s"], 9, "", 100.0)
    assert "s" in gw.tracked and "s" not in gw.finished_ids
    clock.t = 103.01
    (t,) = gw.sweep()
    assert t.state == DEADLINE_MISSED and gw.tracked == {} and gw.counters["deadline_missed"] == 1


def test_fail_all_ends_every_task_in_flight_once(sim2, hand_plant):
    gw = make_gw(sim2, hand_plant, "local")
    for tid in ("a", "b"):
        gw.decide(req(tid))
    assert gw.on_result("a", PART_WHOLE, DONE, "", "device:d0").state == DONE
    gw.decide(req("c"))
    out = gw.fail_all(FAILED, "the gateway was deactivated")
    assert sorted(t.req.task_id for t in out) == ["b", "c"]
    assert all(t.state == FAILED and t.reason == "the gateway was deactivated" for t in out)
    assert gw.tracked == {} and gw.counters["failed"] == 2 and gw.fail_all(FAILED, "again") == []


def test_gateway_refuses_a_duplicate_task_id_also_after_it_finished(sim2, plant2):
    gw = make_gw(sim2, plant2, "local")
    gw.decide(req("dup"))
    with pytest.raises(RequestError, match=r"^task id 'dup' was already submitted$"):
        gw.decide(req("dup"))
    assert gw.on_result("dup", PART_WHOLE, DONE, "", "device:d0").state == DONE
    with pytest.raises(RequestError, match=r"^task id 'dup' was already submitted$"):
        gw.decide(req("dup"))
    assert gw.counters["decided"] == 1


def test_local_policy_books_the_device_queue(sim2, hand_plant):
    clock = FakeClock(100.0)
    spy = Spy(make_policy("local", sim2))
    gw = make_gw(sim2, hand_plant, spy, clock)
    # report-s: W = 100 tokens x 0.010 Gcycles = 1 Gcycle; f_m = 2 GHz -> W / f_m = 0.5 s per task
    g1 = gw.decide(req("t1"))
    assert (g1.target_kind, g1.target_index, g1.target_id) == (TARGET_LOCAL, -1, "local")
    assert g1.parts == (PART_WHOLE,) and g1.share == 0.0 and g1.download is False and not g1.masked
    assert g1.expected_latency_s == pytest.approx(0.5)
    g2 = gw.decide(req("t2"))  # same instant: waits 0.5 s behind t1 -> 1.0 s
    assert g2.expected_latency_s == pytest.approx(1.0)
    assert gw.device_free_s[ID[0]] == pytest.approx(101.0)
    clock.t = 100.2  # the queue ends at 101.0: backlog 0.8 s, t3 ends at 101.5 -> 1.3 s
    g3 = gw.decide(req("t3", created=100.2))
    assert g3.expected_latency_s == pytest.approx(1.3)
    assert gw.device_free_s[ID[0]] == pytest.approx(101.5)
    # the backlog the policy saw grew by W / f_m = 0.5 s per task (less the 0.2 s that passed)
    seen = [float(v.features["device_backlog_s"][0]) for v in spy.views]
    assert seen == pytest.approx([0.0, 0.5, 0.8])
    assert [float(v.features["work_gcycles"][0]) for v in spy.views] == pytest.approx([1.0] * 3)
    # another device's queue is untouched
    assert gw.device_free_s[ID[1]] == 0.0
    assert gw.counters["local"] == 3 and gw.counters["decided"] == 3 and gw.counters["requests"] == 3


def test_energy_of_a_local_task_is_kappa_f2_w(sim2, hand_plant):
    gw = make_gw(sim2, hand_plant, "local")
    gw.decide(req("r"))
    # MATO eq. 4: E = kappa f^2 W = 1e-28 x (2e9)^2 x 1e9 = 1e-28 x 4e18 x 1e9 = 0.4 J (no upload)
    assert gw.tracked["r"].energy_j == pytest.approx(0.4)
    # camera: defect-s, 10 steps x 0.15 Gcycles = 1.5e9 cycles at 4 GHz:
    # E = 1e-28 x 16e18 x 1.5e9 = 2.4 J
    gw.decide(req("i", device=16, kind="image", model="defect-s", units=10, deadline=1.5))
    term = gw.on_result("i", PART_WHOLE, DONE, "", "device:d16")
    assert term.state == DONE and term.energy_j == pytest.approx(2.4)
    assert term.executed_on == "device:d16" and term.latency_s == 0.0


def test_a_silent_or_stale_server_is_never_chosen(sim2, hand_plant):
    clock = FakeClock(100.0)
    gw = make_gw(sim2, hand_plant, FixedPolicy(1, 1.0, True), clock)  # always edge0
    g = gw.decide(req("a"))  # edge0 never sent a status: masked -> local
    assert g.masked and g.target_kind == TARGET_LOCAL and g.parts == (PART_WHOLE,) and g.share == 0.0
    assert gw.counters["masked"] == 1
    gw.on_status("edge0", 0.0, ["report-s"], 10e9, 100.0)
    g = gw.decide(req("b"))
    assert not g.masked and (g.target_kind, g.target_id, g.share, g.download) == (TARGET_EDGE, "edge0", 1.0, True)
    clock.t = 102.5  # 2.5 s since the status > status_stale_s = 2.0
    assert gw.edge_alive(102.5).tolist() == [False, False]
    g = gw.decide(req("c", created=102.5))
    assert g.masked and g.target_kind == TARGET_LOCAL
    assert gw.counters["masked"] == 2
    gw.on_status("nobody", 0.0, [], 1e9, 102.5)  # an unknown server is ignored
    assert gw.diagnostics()["edge_servers_alive"] == "0/2"


def test_greedy_never_picks_a_silent_or_stale_server(sim2, plant2):
    clock = FakeClock(100.0)
    gw = make_gw(sim2, plant2, "greedy", clock)
    # preconditions of the drawn plant (seed 0): device 2 uploads faster to edge0, device 0 to edge1
    assert plant2.devices[2].uplink_mbps[0] > plant2.devices[2].uplink_mbps[1]
    assert plant2.devices[0].uplink_mbps[1] > plant2.devices[0].uplink_mbps[0]
    # no status at all: greedy goes to the cloud (the servers are neither allowed nor known to hold it)
    assert gw.decide(req("n0", device=2)).target_kind == TARGET_CLOUD
    gw.on_status("edge0", 0.0, ["report-s", "report-m"], 10e9, 100.0)
    gw.on_status("edge1", 0.0, ["report-s", "report-m"], 18e9, 100.0)
    # device 2's uplinks 24.9 / 21.4 Mbit/s: the nearest (fastest upload) holder is edge0
    assert gw.decide(req("n1", device=2)).target_id == "edge0"
    # device 0's uplinks 17.4 / 20.3 Mbit/s: edge1
    assert gw.decide(req("n2", device=0)).target_id == "edge1"
    clock.t = 101.9  # 1.9 s <= 2.0: still alive
    assert gw.decide(req("n3", device=2, created=101.9)).target_id == "edge0"
    gw.on_status("edge0", 0.0, ["report-s", "report-m"], 10e9, 101.0)
    clock.t = 102.5  # edge0 heard 1.5 s ago, edge1 2.5 s ago: edge1 is stale
    assert gw.diagnostics()["edge_servers_alive"] == "1/2"
    g = gw.decide(req("n4", device=0, created=102.5))
    assert g.target_id == "edge0" and not g.masked  # edge1 would be nearer, but it is silent
    clock.t = 103.5  # both stale: the cloud, never a silent server
    g = gw.decide(req("n5", device=0, created=103.5))
    assert g.target_kind == TARGET_CLOUD and not g.masked


@pytest.mark.parametrize("device, kind, model, units, expected", [
    (2, "report", "report-s", 100, "edge0"),  # both hold it; uplink 24.9 > 21.4
    (0, "report", "report-s", 150, "edge1"),  # both hold it; uplink 20.3 > 17.4
    (16, "image", "defect-s", 10, "edge0"),  # only edge0 holds it
    (17, "image", "defect-m", 5, "edge1"),  # only edge1 holds it
    (0, "report", "report-xl", 64, "cloud"),  # nobody holds it
])
def test_greedy_decision_equals_the_heuristic_on_live_view(sim2, plant2, device, kind, model, units, expected):
    clock = FakeClock(100.0)
    spy = Spy(make_policy("greedy", sim2))
    gw = make_gw(sim2, plant2, spy, clock)
    cached0, cached1 = ["report-s", "report-m", "defect-s"], ["report-s", "report-m", "defect-m"]
    gw.on_status("edge0", 0.4, cached0, 10e9, 99.9)  # aged: 0.4 - 0.1 = 0.3 s
    gw.on_status("edge1", 0.1, cached1, 18e9, 100.0)
    r = req("g", device=device, kind=kind, model=model, units=units, input_bits=3_000_000, output_bits=80_000)
    gd = gw.decide(r)
    dev = gw.devices[ID[device]]
    task = LiveTask(device=dev.index, kind=kind, model=model, units=units, input_mbit=3.0, output_mbit=0.08,
                    deadline_s=2.5)
    state = LiveState(device_cpu_ghz=dev.cpu_ghz, device_backlog_s=0.0, uplink_mbps=list(dev.uplink_mbps),
                      edge_backlog_s=[0.3, 0.1], edge_cpu_ghz=[10.0, 18.0], edge_cached_models=[cached0, cached1],
                      backhaul_backlog_s=0.0, relay_edge=int(np.argmax(dev.uplink_mbps)))
    view = sim2.live_view([task], [state])
    ref = make_policy("greedy", sim2)
    ref.reset(np.random.default_rng(0))
    dec = ref.decide(view)
    target = int(dec.target[0])
    assert sim2.target_names[target] == expected
    assert gd.target_id == ("local" if target == 0 else expected)
    assert gd.target_kind == (TARGET_LOCAL if target == 0 else TARGET_CLOUD if target == 3 else TARGET_EDGE)
    assert gd.share == float(dec.share[0]) == 1.0
    assert gd.download == (bool(dec.download[0]) and 1 <= target <= 2)
    # the gateway fed the policy the very same features
    got = spy.views[0].features
    for k, v in view.features.items():
        np.testing.assert_allclose(np.asarray(got[k], dtype=float), np.asarray(v, dtype=float), err_msg=k)
    assert spy.views[0].allowed.all()  # both alive


def test_split_task_needs_both_parts_and_books_its_estimates(sim2, hand_plant):
    clock = FakeClock(100.0)
    spy = Spy(FixedPolicy(1, 0.5, False))
    gw = make_gw(sim2, hand_plant, spy, clock)
    gw.on_status("edge0", 0.3, ["report-s"], 10e9, 100.0)
    g = gw.decide(req("s"))  # device 0: 2 GHz, 20 Mbit/s to edge0; W = 1e9 cycles, x = 4e6 bit
    assert (g.target_kind, g.target_id, g.target_index, g.share, g.download) == (TARGET_EDGE, "edge0", 0, 0.5, False)
    assert g.parts == (PART_LOCAL, PART_REMOTE)
    # local: 0.5e9 / 2e9 = 0.25 s; upload 0.5 x 4e6 / 20e6 = 0.1 s; remote 0.5e9 / 10e9 = 0.05 s
    # expected = max(0.25, 0.1 + 0.3 backlog + 0.05) = 0.45 s
    assert g.expected_latency_s == pytest.approx(0.45)
    assert gw.device_free_s[ID[0]] == pytest.approx(100.25)
    assert gw.edges[0].handed_s == pytest.approx(0.05)
    assert gw.upload_delay_s(g, req("s")) == pytest.approx(0.1)
    # energy: 1e-28 x 4e18 x 0.5e9 = 0.2 J compute + 0.2 W x 0.1 s = 0.02 J upload = 0.22 J
    assert gw.tracked["s"].energy_j == pytest.approx(0.22)
    # the next request sees edge0's backlog plus what was handed to it: 0.3 + 0.05 = 0.35 s
    gw.decide(req("s2", device=1))
    assert float(spy.views[1].features["edge_backlog_s"][0][0]) == pytest.approx(0.35)
    # a newer status replaces the hand-off estimate
    gw.on_status("edge0", 0.6, ["report-s"], 10e9, 100.0)
    assert gw.edges[0].handed_s == 0.0 and gw.edges[0].backlog_s == 0.6
    # results: the device part alone does not finish the task
    clock.t = 100.3
    assert gw.on_result("s", PART_LOCAL, DONE, "", "device:d0") is None
    assert gw.tracked["s"].pending == {PART_REMOTE}
    clock.t = 100.6
    term = gw.on_result("s", PART_REMOTE, DONE, "", "edge:edge0")
    assert term is not None and term.state == DONE and term.reason == ""
    assert term.latency_s == pytest.approx(0.6) and term.energy_j == pytest.approx(0.22)
    assert term.executed_on == "device:d0+edge:edge0"
    assert [r[0] for r in term.results] == [PART_LOCAL, PART_REMOTE]
    assert "s" not in gw.tracked and gw.counters["done"] == 1


def test_share_zero_to_an_edge_means_local(sim2, hand_plant):
    gw = make_gw(sim2, hand_plant, FixedPolicy(1, 0.0, True))
    gw.on_status("edge0", 0.0, ["report-s"], 10e9, 100.0)
    g = gw.decide(req("z"))
    assert g.target_kind == TARGET_LOCAL and g.parts == (PART_WHOLE,) and g.download is False and not g.masked


def test_cloud_books_the_backhaul(sim2, hand_plant):
    gw = make_gw(sim2, hand_plant, FixedPolicy(3, 1.0, True))  # 3 = cloud with 2 edge servers
    g1 = gw.decide(req("c1"))
    assert (g1.target_kind, g1.target_id, g1.target_index) == (TARGET_CLOUD, "cloud", -1)
    assert g1.download is False and g1.parts == (PART_WHOLE,)
    # relay = best uplink (edge0, 20 Mbit/s): upload 4e6 / 20e6 = 0.2 s; backhaul 4e6 / 20e6 = 0.2 s
    # -> backhaul free at 100.4; expected = 0.4 + 1e9 / 40e9 = 0.425 s
    assert gw.backhaul_free_s == pytest.approx(100.4)
    assert g1.expected_latency_s == pytest.approx(0.425)
    assert gw.upload_delay_s(g1, req("c1")) == pytest.approx(0.2)
    # device energy: upload only, 0.2 W x 0.2 s = 0.04 J
    assert gw.tracked["c1"].energy_j == pytest.approx(0.04)
    # a second one queues behind it on the backhaul: max(100.2, 100.4) + 0.2 = 100.6 -> 0.625 s
    g2 = gw.decide(req("c2"))
    assert gw.backhaul_free_s == pytest.approx(100.6) and g2.expected_latency_s == pytest.approx(0.625)
    assert gw.counters["cloud"] == 2


def test_a_failed_part_terminates_at_once(sim2, hand_plant):
    gw = make_gw(sim2, hand_plant, FixedPolicy(1, 0.5, False))
    gw.on_status("edge0", 0.0, ["report-s"], 10e9, 100.0)
    gw.decide(req("f"))
    term = gw.on_result("f", PART_REMOTE, FAILED, "edge0 could not fetch model report-s", "edge:edge0")
    assert term is not None and term.state == FAILED and term.reason == "edge0 could not fetch model report-s"
    assert gw.counters["failed"] == 1 and "f" not in gw.tracked
    # the device part arriving afterwards is a late result
    assert gw.on_result("f", PART_LOCAL, DONE, "", "device:d0") is None
    assert gw.counters["late_results"] == 1 and gw.counters["done"] == 0
    # fail() from the hand-off path, for a whole task
    gw2 = make_gw(sim2, hand_plant, "local")
    gw2.decide(req("w"))
    term = gw2.fail("w", FAILED, "edge0 is not reachable")
    assert term.state == FAILED and term.reason == "edge0 is not reachable" and term.executed_on == "local"
    assert gw2.fail("w", FAILED, "again") is None


def test_done_after_the_deadline_is_a_miss(sim2, hand_plant):
    clock = FakeClock(100.0)
    gw = make_gw(sim2, hand_plant, "local", clock)
    gw.decide(req("late"))  # deadline at 100 + 2.5 = 102.5
    gw.decide(req("ok"))
    clock.t = 102.5005  # within the 1 ms tolerance
    assert gw.on_result("ok", PART_WHOLE, DONE, "", "device:d0").state == DONE
    clock.t = 102.6
    term = gw.on_result("late", PART_WHOLE, DONE, "", "device:d0")
    assert term.state == DEADLINE_MISSED and term.reason == "finished 0.100 s after the deadline"
    assert term.latency_s == pytest.approx(2.6)
    assert gw.counters["done"] == 1 and gw.counters["deadline_missed"] == 1


def test_sweep_names_the_missing_part(sim2, hand_plant):
    clock = FakeClock(100.0)
    gw = make_gw(sim2, hand_plant, FixedPolicy(1, 0.5, False), clock, result_grace_s=0.5)
    gw.on_status("edge0", 0.0, ["report-s"], 10e9, 100.0)
    gw.decide(req("sp"))  # split, deadline 102.5
    gw.on_result("sp", PART_LOCAL, DONE, "", "device:d0")
    clock.t = 103.0  # = deadline + grace: not yet
    assert gw.sweep() == []
    clock.t = 103.01
    out = gw.sweep()
    assert len(out) == 1 and out[0].state == DEADLINE_MISSED
    assert out[0].reason == "no result for the offloaded part from edge0 within the 2.5 s deadline"
    assert out[0].latency_s == pytest.approx(3.01) and gw.tracked == {} and gw.counters["deadline_missed"] == 1
    assert gw.sweep() == []
    # a whole local task with no result at all
    gw2 = make_gw(sim2, hand_plant, "local", clock)
    gw2.decide(req("wh", deadline=1.5, created=103.01))
    clock.t = 105.1  # > 103.01 + 1.5 + 0.5 = 105.01
    (t,) = gw2.sweep()
    assert t.reason == "no result for the task from local within the 1.5 s deadline"
    assert t.executed_on == "local"


def test_sweep_expires_in_deadline_order_skips_finished_tasks_and_forgets_old_ids(sim2, hand_plant):
    clock = FakeClock(100.0)
    gw = make_gw(sim2, hand_plant, "local", clock, result_grace_s=0.5)
    # deadlines 101.5 (b), 102.5 (a, c); c finishes before its deadline
    gw.decide(req("a"))
    gw.decide(req("b", deadline=1.5))
    gw.decide(req("c"))
    assert gw.on_result("c", PART_WHOLE, DONE, "", "device:d0").state == DONE
    clock.t = 102.01
    assert [t.req.task_id for t in gw.sweep()] == ["b"]
    clock.t = 103.01
    assert [t.req.task_id for t in gw.sweep()] == ["a"]  # c was terminal already: not swept again
    assert gw.tracked == {} and gw.counters["deadline_missed"] == 2 and gw.counters["done"] == 1
    # a terminal id is remembered for 60 s (a duplicate request is refused), then forgotten in time order
    assert list(gw.finished_ids) == ["c", "b", "a"]
    clock.t = 100.0 + 60.5  # c finished at 100.0
    gw.sweep()
    assert list(gw.finished_ids) == ["b", "a"]
    clock.t = 103.01 + 60.01
    gw.sweep()
    assert gw.finished_ids == {}


def test_a_reused_task_id_is_not_swept_by_the_deadline_of_the_task_that_had_it_before(sim2, hand_plant):
    clock = FakeClock(100.0)
    gw = make_gw(sim2, hand_plant, "local", clock, result_grace_s=0.5)
    gw.decide(req("r", deadline=300.0))  # deadline 400
    assert gw.on_result("r", PART_WHOLE, DONE, "", "device:d0").state == DONE  # at 100, long before it
    clock.t = 160.5  # 60 s after it ended the id is forgotten: the device may use it again
    assert gw.sweep() == [] and gw.finished_ids == {}
    gw.decide(req("r", deadline=300.0, created=160.5))  # deadline 460.5
    clock.t = 400.6  # past the first task's deadline + grace: its heap entry pops
    assert gw.sweep() == [] and "r" in gw.tracked
    clock.t = 461.1  # past the second's
    (t,) = gw.sweep()
    assert t.state == DEADLINE_MISSED and t.req.created_at_s == 160.5
    assert gw.counters["deadline_missed"] == 1 and gw.counters["done"] == 1


def test_results_for_unknown_or_finished_tasks_are_late(sim2, hand_plant):
    gw = make_gw(sim2, hand_plant, "local")
    assert gw.on_result("never", PART_WHOLE, DONE, "", "x") is None
    assert gw.counters["late_results"] == 1
    gw.decide(req("t"))
    assert gw.on_result("t", PART_WHOLE, DONE, "", "device:d0").state == DONE
    assert gw.on_result("t", PART_WHOLE, DONE, "", "device:d0") is None
    assert gw.counters["late_results"] == 2 and gw.counters["done"] == 1


def test_a_whole_task_result_settles_a_split_task_part(sim2, hand_plant):
    gw = make_gw(sim2, hand_plant, FixedPolicy(1, 0.5, False))
    gw.on_status("edge0", 0.0, ["report-s"], 10e9, 100.0)
    gw.decide(req("x"))
    assert gw.on_result("x", PART_LOCAL, DONE, "", "device:d0") is None
    term = gw.on_result("x", PART_WHOLE, DONE, "", "edge:edge0")  # an executor that reports PART_WHOLE
    assert term is not None and term.state == DONE


def test_a_repeated_part_does_not_settle_the_other_part(sim2, hand_plant):
    gw = make_gw(sim2, hand_plant, FixedPolicy(1, 0.5, False))
    gw.on_status("edge0", 0.0, ["report-s"], 10e9, 100.0)
    gw.decide(req("d"))
    assert gw.on_result("d", PART_LOCAL, DONE, "", "device:d0") is None
    # the same device part again (a duplicated message): the offloaded part is still open
    assert gw.on_result("d", PART_LOCAL, DONE, "", "device:d0") is None
    assert gw.tracked["d"].pending == {PART_REMOTE}


# ============================================================================================
# deployment
# ============================================================================================
GOOD_DEPLOYMENT = """\
preset: factory
seed: 3
num_edge_servers: 2
gateway:
  policy: local
  result_grace_s: 0.25
edge_server:
  execution: paced
  status_period_s: 0.2
"""


def test_load_deployment_reads_a_good_file(tmp_path):
    f = tmp_path / "dep.yaml"
    f.write_text(GOOD_DEPLOYMENT)
    dep = load_deployment(f)
    assert (dep.preset, dep.seed, dep.num_edge_servers) == ("factory", 3, 2)
    assert dep.gateway.policy == "local" and dep.gateway.result_grace_s == 0.25
    assert dep.gateway.fallback_policy == "greedy" and dep.gateway.submit_timeout_s == 1.0  # defaults
    assert dep.edge_server.status_period_s == 0.2 and dep.edge_server.download_chunk_bytes == 1 << 20
    assert dep.cloud.catalog_dir == "" and dep.cloud.max_chunk_bytes == 1 << 20
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_deployment(empty) == Deployment()


def test_load_deployment_reads_the_shipped_file():
    import aigc_offload

    from pathlib import Path

    f = Path(aigc_offload.__file__).resolve().parent.parent / "config" / "factory.yaml"
    if not f.is_file():
        pytest.skip("config/factory.yaml is not next to the package")
    dep = load_deployment(f)
    assert dep.preset == "factory" and dep.num_edge_servers is None
    # The default gateway policy is the shipped trained one, with greedy as its fallback.
    import policies

    from policies.shipped import default_policy_name

    assert dep.gateway.policy == f"{default_policy_name()}.onnx" and dep.gateway.fallback_policy == "greedy"
    assert (Path(policies.__file__).resolve().parent / "trained" / dep.gateway.policy).is_file()


def test_load_deployment_applies_dotted_overrides(tmp_path):
    f = tmp_path / "dep.yaml"
    f.write_text(GOOD_DEPLOYMENT)  # no cloud section: an override creates it
    dep = load_deployment(f, {"seed": 7, "gateway.policy": "round_robin", "edge_server.status_period_s": 0.5,
                              "cloud.catalog_dir": "/srv/catalog", "num_edge_servers": None})
    assert dep.seed == 7 and dep.gateway.policy == "round_robin" and dep.edge_server.status_period_s == 0.5
    assert dep.cloud.catalog_dir == "/srv/catalog" and dep.num_edge_servers is None
    assert dep.gateway.result_grace_s == 0.25  # the rest of the section is kept
    with pytest.raises(DeploymentError) as exc:
        load_deployment(f, {"gateway.result_grace_s": -1})
    assert str(exc.value) == (f"deployment file '{f}': gateway.result_grace_s: "
                              "Input should be greater than or equal to 0")
    with pytest.raises(DeploymentError) as exc:
        load_deployment(f, {"gateway.polcy": "x"})
    assert str(exc.value) == f"deployment file '{f}': gateway.polcy: Extra inputs are not permitted"


def test_load_deployment_dotted_override_through_a_scalar_is_a_deployment_error(tmp_path):
    f = tmp_path / "dep.yaml"
    f.write_text(GOOD_DEPLOYMENT)
    with pytest.raises(DeploymentError, match="seed"):
        load_deployment(f, {"seed.value": 1})  # e.g. `aigc-offload factory --set seed.value=1`


def test_load_deployment_missing_file(tmp_path):
    f = tmp_path / "nope.yaml"
    with pytest.raises(DeploymentError) as exc:
        load_deployment(f)
    assert str(exc.value) == f"deployment file '{f}' does not exist"


def test_load_deployment_bad_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("gateway: [policy: greedy\nseed: 0\n")
    with pytest.raises(DeploymentError) as exc:
        load_deployment(f)
    assert str(exc.value).startswith(f"deployment file '{f}' is not valid YAML: ")
    g = tmp_path / "list.yaml"
    g.write_text("- preset\n- seed\n")
    with pytest.raises(DeploymentError) as exc:
        load_deployment(g)
    assert str(exc.value) == f"deployment file '{g}' must be a mapping"


@pytest.mark.parametrize("text, where", [
    ("bogus: 1\n", "bogus: Extra inputs are not permitted"),
    ("gateway:\n  polcy: greedy\n", "gateway.polcy: Extra inputs are not permitted"),
    ("edge_server:\n  execution: fast\n", "edge_server.execution: Input should be 'paced' or 'generative'"),
    ("num_edge_servers: 0\n", "num_edge_servers: Input should be greater than or equal to 1"),
])
def test_load_deployment_schema_errors_say_where(tmp_path, text, where):
    f = tmp_path / "dep.yaml"
    f.write_text(text)
    with pytest.raises(DeploymentError) as exc:
        load_deployment(f)
    assert str(exc.value) == f"deployment file '{f}': {where}"


def test_more_edge_servers_than_the_preset_is_a_deployment_error(tmp_path):
    f = tmp_path / "dep.yaml"
    f.write_text("num_edge_servers: 9\n")
    dep = load_deployment(f)  # the schema cannot know the preset; drawing the plant does
    with pytest.raises(DeploymentError) as exc:
        draw_plant(dep)
    assert str(exc.value) == "num_edge_servers 9 exceeds the preset's 4 edge servers"
    with pytest.raises(DeploymentError, match="num_edge_servers 5 exceeds the preset's 4 edge servers"):
        node_specs(Deployment(num_edge_servers=5))


def test_draw_plant_is_deterministic_per_seed_with_unique_device_ids():
    a, b = draw_plant(Deployment(seed=0)), draw_plant(Deployment(seed=0))
    assert a == b
    c = draw_plant(Deployment(seed=1))
    assert [d.cpu_ghz for d in c.devices] != [d.cpu_ghz for d in a.devices]
    for plant in (a, c):
        ids = [d.device_id for d in plant.devices]
        assert len(ids) == 16 + 14 and len(set(ids)) == len(ids) and all(ids)
        assert [d.index for d in plant.devices] == list(range(30))
        assert [d.kind for d in plant.devices] == ["controller"] * 16 + ["camera"] * 14
        assert all(1.0 <= d.cpu_ghz <= 3.0 for d in plant.devices[:16])
        assert all(3.0 <= d.cpu_ghz <= 5.0 for d in plant.devices[16:])
        assert all(len(d.uplink_mbps) == 4 and min(d.uplink_mbps) > 0 for d in plant.devices)
        assert [d.line for d in plant.devices] == [m % 2 for m in range(30)]
    # the edge servers and their warm caches do not depend on the seed (spec §1.6, shipped preset:
    # {0,1,4}, {0,1,5}, {2,6}, {0,3})
    assert a.edges == c.edges
    assert [e.server_id for e in a.edges] == ["edge0", "edge1", "edge2", "edge3"]
    assert [e.cpu_ghz for e in a.edges] == [10.0, 18.0, 28.0, 44.0]
    assert [set(e.initial_models) for e in a.edges] == [
        {"report-s", "report-m", "defect-s"}, {"report-s", "report-m", "defect-m"},
        {"report-l", "defect-l"}, {"report-s", "report-xl"}]
    # fewer servers take the first ones; the devices are the same draw
    two = draw_plant(Deployment(seed=0, num_edge_servers=2))
    assert two.edges == a.edges[:2]
    assert [d.uplink_mbps for d in two.devices] == [d.uplink_mbps[:2] for d in a.devices]
    assert [d.device_id for d in two.devices] == [d.device_id for d in a.devices]


def test_node_specs_lists_the_graph_with_the_plant_parameters(plant2):
    dep = Deployment(num_edge_servers=2, gateway={"policy": "local", "fallback_policy": "greedy"},
                     cloud={"catalog_dir": "/srv/catalog"})
    specs = node_specs(dep, plant2)
    assert [s.name for s in specs] == ["cloud_model_server", "edge0", "edge1", "edge_gateway"]
    assert [s.executable for s in specs] == ["cloud_model_server", "edge_server", "edge_server", "edge_gateway"]
    assert specs[1].module == "aigc_offload.edge_server"
    assert specs[0].parameters == {"catalog_dir": "/srv/catalog", "max_chunk_bytes": 1 << 20, "autostart": True}
    for spec, e in zip(specs[1:3], plant2.edges):
        p = spec.parameters
        assert p["server_id"] == e.server_id and p["server_index"] == e.index
        assert p["cpu_ghz"] == e.cpu_ghz and p["storage_mb"] == e.storage_mb
        assert p["initial_models"] == list(e.initial_models) and p["peers"] == ["edge0", "edge1"]
        assert (p["preset"], p["execution"], p["status_period_s"], p["cache_dir"], p["download_chunk_bytes"],
                p["autostart"]) == ("factory", "paced", 0.1, "", 1 << 20, True)
    assert (specs[1].parameters["cpu_ghz"], specs[2].parameters["cpu_ghz"]) == (10.0, 18.0)
    assert specs[3].parameters == {
        "preset": "factory", "seed": 0, "num_edge_servers": 2, "policy": "local", "fallback_policy": "greedy",
        "result_grace_s": 0.5, "submit_timeout_s": 1.0, "diagnostics_period_s": 1.0, "autostart": True}
    # without a plant, node_specs draws the same one
    assert node_specs(dep) == specs


def test_node_specs_of_a_cold_plant_pass_a_non_empty_string_list(tmp_path):
    from pathlib import Path

    import policies

    text = (Path(policies.__file__).resolve().parent / "presets" / "factory.yaml").read_text()
    assert "initial_cache: popular" in text
    preset = tmp_path / "cold.yaml"
    preset.write_text(text.replace("initial_cache: popular", "initial_cache: empty"))
    dep = Deployment(preset=str(preset), num_edge_servers=1, cloud={"catalog_dir": "/c"})
    specs = node_specs(dep)
    assert [s.name for s in specs] == ["cloud_model_server", "edge0", "edge_gateway"]
    # ROS parameters cannot be an empty list of unknown type: [""] means "no model"
    assert specs[1].parameters["initial_models"] == [""] and specs[1].parameters["peers"] == ["edge0"]


def test_params_file_text_has_no_aliases_and_round_trips(plant2):
    dep = Deployment(num_edge_servers=2, cloud={"catalog_dir": "/srv/catalog"})
    specs = node_specs(dep, plant2)
    expected = {s.name: {"ros__parameters": s.parameters} for s in specs}
    # the shared `peers` list would become an anchor/alias with a plain dumper
    assert re.search(r"[&*]id\d+", yaml.safe_dump(expected)) is not None
    text = params_file_text(specs)
    assert re.search(r"(^|[\s:\[,-])[&*][A-Za-z0-9_]+", text, flags=re.M) is None
    assert yaml.safe_load(text) == expected
    assert list(yaml.safe_load(text)) == ["cloud_model_server", "edge0", "edge1", "edge_gateway"]


def test_throttled_log_emits_once_per_period_and_counts_what_it_left_out():
    from aigc_offload.log_throttle import ThrottledLog

    now = [100.0]
    lines: list[str] = []
    log = ThrottledLog(lines.append, 5.0, clock=lambda: now[0])
    assert log("a") is True
    for _ in range(7):
        now[0] += 0.5
        assert log("b") is False
    assert lines == ["a"] and log.suppressed == 7
    now[0] = 105.0  # exactly one period after the first line
    assert log("c") is True
    assert lines[-1] == "c (7 more like this in the last 5 s not logged)" and log.suppressed == 0
    now[0] += 10.0
    assert log("d") is True and lines[-1] == "d"
    with pytest.raises(ValueError):
        ThrottledLog(lines.append, 0.0)
