"""The gateway's HandOffScheduler (one thread sends every offloaded share when its upload ends) with
fake SubmitTask clients: order by due time, retries while a service is not up, the four ways a
hand-off fails (unknown target, unreachable, refused, silent), and that an acknowledged one is quiet.

No ROS graph: the futures are rclpy's own ``Future`` objects completed by the test.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("aigc_offload.edge_gateway", reason="pip install -e ros2_ws/src/aigc_offload into the venv")

from rclpy.task import Future  # noqa: E402

from aigc_offload.hand_off import HandOffScheduler  # noqa: E402


class FakeClient:
    def __init__(self, name: str, ready: bool = True, answer: str | None = "accept"):
        self.srv_name = f"/{name}/submit_task"
        self.ready = ready
        self.answer = answer  # "accept", "refuse" or None (never answers)
        self.sent: list[str] = []
        self.futures: list[Future] = []
        self.lock = threading.Lock()

    def service_is_ready(self) -> bool:
        return self.ready

    def call_async(self, request) -> Future:
        fut = Future()
        with self.lock:
            self.sent.append(request.task.task_id)
            self.futures.append(fut)
        if self.answer == "accept":
            fut.set_result(SimpleNamespace(accepted=True, reason=""))
        elif self.answer == "refuse":
            fut.set_result(SimpleNamespace(accepted=False, reason="queue full"))
        return fut


def req(task_id: str):
    return SimpleNamespace(task=SimpleNamespace(task_id=task_id))


def wait_until(cond, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.fixture
def harness():
    clients = {"edge0": FakeClient("edge0"), "edge1": FakeClient("edge1")}
    failures: list[tuple[str, str]] = []
    lock = threading.Lock()

    def fail(task_id: str, reason: str) -> None:
        with lock:
            failures.append((task_id, reason))

    sched = HandOffScheduler(clients.get, fail, timeout_s=0.5)
    yield sched, clients, failures
    sched.stop()


def test_sent_in_order_of_their_upload_end(harness):
    sched, clients, failures = harness
    sched.schedule(0.30, req("late"), "edge0")
    sched.schedule(0.0, req("now"), "edge0")
    sched.schedule(0.15, req("middle"), "edge0")
    assert wait_until(lambda: len(clients["edge0"].sent) == 3)
    assert clients["edge0"].sent == ["now", "middle", "late"]
    assert wait_until(lambda: sched.pending() == 0)
    assert failures == []


def test_unknown_target_fails_with_its_name(harness):
    sched, _, failures = harness
    sched.schedule(0.0, req("t1"), "edge9")
    assert wait_until(lambda: len(failures) == 1)
    assert failures[0][0] == "t1" and "edge9 is not a target of this gateway" in failures[0][1]


def test_service_down_then_up_is_retried_and_sent(harness):
    sched, clients, failures = harness
    clients["edge1"].ready = False
    sched.schedule(0.0, req("t2"), "edge1")
    time.sleep(0.12)  # a few 50 ms retries pass with the service down
    assert clients["edge1"].sent == []
    clients["edge1"].ready = True
    assert wait_until(lambda: clients["edge1"].sent == ["t2"])
    assert wait_until(lambda: sched.pending() == 0)
    assert failures == []


def test_service_never_up_fails_as_unreachable(harness):
    sched, clients, failures = harness
    clients["edge1"].ready = False
    sched.schedule(0.0, req("t3"), "edge1")
    assert wait_until(lambda: len(failures) == 1)
    assert failures[0] == ("t3", "edge1 is not reachable (/edge1/submit_task has no server)")
    assert clients["edge1"].sent == [] and sched.pending() == 0


def test_refusal_is_reported_with_the_servers_reason(harness):
    sched, clients, failures = harness
    clients["edge0"].answer = "refuse"
    sched.schedule(0.0, req("t4"), "edge0")
    assert wait_until(lambda: len(failures) == 1)
    assert failures[0] == ("t4", "edge0 refused the task: queue full")


def test_silent_server_times_out_after_two_attempts_and_its_calls_are_cancelled(harness):
    sched, clients, failures = harness
    clients["edge0"].answer = None
    sched.schedule(0.0, req("t5"), "edge0")
    assert wait_until(lambda: len(failures) == 1)
    assert failures[0] == ("t5", "edge0 did not acknowledge the task within 0.5 s (2 attempt(s))")
    assert clients["edge0"].sent == ["t5", "t5"]
    assert all(f.cancelled() for f in clients["edge0"].futures)
    # a reply after the timeout is ignored: no second failure
    assert sched.pending() == 0 and len(failures) == 1


def test_a_lost_acknowledgement_is_asked_for_again_and_the_late_first_reply_is_ignored(harness):
    sched, clients, failures = harness
    edge = clients["edge0"]
    edge.answer = None  # the first call's reply is lost ...
    sched.schedule(0.0, req("t6"), "edge0")
    assert wait_until(lambda: len(edge.sent) == 1)
    edge.answer = "accept"  # ... the second is answered
    assert wait_until(lambda: len(edge.sent) == 2)
    assert wait_until(lambda: sched.pending() == 0)
    assert edge.futures[0].cancelled() and edge.futures[1].result().accepted
    time.sleep(0.6)  # past a second timeout: nothing more is sent, nothing fails
    assert edge.sent == ["t6", "t6"] and failures == []


def test_one_attempt_fails_at_the_first_timeout():
    edge = FakeClient("edge0", answer=None)
    failures: list = []
    sched = HandOffScheduler({"edge0": edge}.get, lambda t, r: failures.append((t, r)), timeout_s=0.2, attempts=1)
    try:
        sched.schedule(0.0, req("t7"), "edge0")
        assert wait_until(lambda: len(failures) == 1)
        assert edge.sent == ["t7"] and "(1 attempt(s))" in failures[0][1]
    finally:
        sched.stop()
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        HandOffScheduler({}.get, lambda *_a: None, timeout_s=0.2, attempts=0)


def test_many_hand_offs_each_end_exactly_once(harness):
    sched, clients, failures = harness
    clients["edge1"].answer = "refuse"
    for i in range(200):
        sched.schedule((i % 7) * 0.01, req(f"a{i}"), "edge0" if i % 2 == 0 else "edge1")
    assert wait_until(lambda: len(clients["edge0"].sent) + len(clients["edge1"].sent) == 200)
    assert wait_until(lambda: len(failures) == 100)
    assert sorted(t for t, _ in failures) == sorted(f"a{i}" for i in range(1, 200, 2))
    assert sorted(clients["edge0"].sent) == sorted(f"a{i}" for i in range(0, 200, 2))


def test_stop_ends_the_thread():
    sched = HandOffScheduler(lambda _t: None, lambda *_a: None, timeout_s=1.0)
    sched.schedule(10.0, req("never"), "edge0")
    sched.stop()
    assert not sched._thread.is_alive()


def test_acknowledged_is_called_once_per_accepted_hand_off_and_never_for_a_failed_one():
    clients = {"ok": FakeClient("ok"), "no": FakeClient("no", answer="refuse"), "mute": FakeClient("mute", answer=None)}
    landed: list[str] = []
    failed: list[str] = []
    sched = HandOffScheduler(clients.get, lambda t, _r: failed.append(t), timeout_s=0.2,
                             acknowledged=landed.append)
    try:
        for i, target in enumerate(["ok", "no", "mute", "ok", "gone"]):
            sched.schedule(0.0, req(f"t{i}"), target)
        assert wait_until(lambda: len(landed) + len(failed) == 5)
        time.sleep(0.3)
        assert sorted(landed) == ["t0", "t3"] and sorted(failed) == ["t1", "t2", "t4"]
    finally:
        sched.stop()


def test_a_service_not_discovered_yet_is_waited_for_until_the_tasks_deadline(harness):
    """The first tasks of a plant can reach the gateway before discovery has matched it to a
    target's service: the hand-off waits for it while the task can still make its deadline."""
    sched, clients, failures = harness  # timeout_s 0.5

    def with_deadline(task_id: str, deadline_s: float):
        now = time.time()
        created = SimpleNamespace(sec=int(now), nanosec=int((now % 1) * 1e9))
        return SimpleNamespace(task=SimpleNamespace(task_id=task_id, created_at=created, deadline_s=deadline_s))

    clients["edge1"].ready = False
    t0 = time.monotonic()
    sched.schedule(0.0, with_deadline("late-up", 3.0), "edge1")
    time.sleep(1.0)  # past timeout_s, before the deadline: still waiting, nothing failed
    assert failures == [] and clients["edge1"].sent == []
    clients["edge1"].ready = True
    assert wait_until(lambda: clients["edge1"].sent == ["late-up"])
    assert wait_until(lambda: sched.pending() == 0) and failures == []

    clients["edge0"].ready = False
    t0 = time.monotonic()
    sched.schedule(0.0, with_deadline("never-up", 1.5), "edge0")
    assert wait_until(lambda: len(failures) == 1)
    assert failures[0] == ("never-up", "edge0 is not reachable (/edge0/submit_task has no server)")
    assert 1.3 <= time.monotonic() - t0 < 5.0  # at the deadline, not at timeout_s


def test_stop_with_a_reason_fails_every_open_hand_off_once_and_a_later_one_at_once():
    """A gateway deactivated with tasks in flight: the queued and the unacknowledged hand-offs used to
    be dropped without ``fail``, so their tasks never got a terminal state."""
    clients = {"mute": FakeClient("mute", answer=None), "ok": FakeClient("ok")}
    failures: list[tuple[str, str]] = []
    sched = HandOffScheduler(clients.get, lambda t, r: failures.append((t, r)), timeout_s=30.0)
    sched.schedule(0.0, req("sent"), "mute")  # sent, never acknowledged
    sched.schedule(30.0, req("queued"), "ok")  # its upload has not ended yet
    assert wait_until(lambda: clients["mute"].sent == ["sent"])
    sched.stop("the gateway was deactivated")
    assert not sched._thread.is_alive() and sched.pending() == 0
    assert sorted(failures) == [("queued", "not handed to ok: the gateway was deactivated"),
                                ("sent", "not handed to mute: the gateway was deactivated")]
    assert clients["mute"].futures[0].cancelled()
    sched.schedule(0.0, req("late"), "ok")  # from a thread that had not seen the stop
    assert failures[-1] == ("late", "not handed to ok: the gateway was deactivated") and clients["ok"].sent == []


def test_an_endless_deadline_gives_up_after_timeout_s(harness):
    """deadline_s=inf (a direct ROS publisher) made the wait for an undiscovered service endless."""
    sched, clients, failures = harness  # timeout_s 0.5
    created = SimpleNamespace(sec=int(time.time()), nanosec=0)
    clients["edge1"].ready = False
    sched.schedule(0.0, SimpleNamespace(task=SimpleNamespace(task_id="inf", created_at=created,
                                                             deadline_s=float("inf"))), "edge1")
    assert wait_until(lambda: len(failures) == 1, 5.0)
    assert failures[0] == ("inf", "edge1 is not reachable (/edge1/submit_task has no server)")
