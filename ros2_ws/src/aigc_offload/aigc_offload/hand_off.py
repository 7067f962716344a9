"""Sending ``SubmitTask`` hand-offs from one thread, with a timeout and one more attempt.

Used by the gateway (every offloaded share, when its modeled upload ends) and by the edge servers
(a task forwarded to a peer or to the cloud, at once). A thread per hand-off, which both used to
start, cost a thread start and a blocked thread per task at hundreds of tasks per second (7% of a
forwarding edge server's samples in py-spy at 500 requests/s).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


def _deadline_s(request: Any) -> float:
    """The task's deadline as POSIX seconds (``created_at`` + ``deadline_s``), 0 if it has none."""
    task = getattr(request, "task", None)
    created = getattr(task, "created_at", None)
    if created is None:
        return 0.0
    at = created.sec + created.nanosec * 1e-9 + float(getattr(task, "deadline_s", 0.0))
    return at if math.isfinite(at) else 0.0  # an endless deadline must not mean retrying forever


@dataclass(order=True)
class _HandOff:
    due_s: float  # wall-clock time the upload of the offloaded share ends (heap key)
    seq: int
    request: Any = field(compare=False)  # SubmitTask.Request
    target_id: str = field(compare=False)
    give_up_s: float = field(compare=False, default=0.0)  # wall-clock time to stop waiting for the service
    future: Any = field(compare=False, default=None)
    timeout_at_s: float = field(compare=False, default=0.0)
    attempts: int = field(compare=False, default=0)  # SubmitTask calls sent so far


class HandOffScheduler:
    """Sends each offloaded share (``SubmitTask``) when its modeled upload ends, from one thread.

    One thread for every hand-off instead of a ``threading.Timer`` per task, which cost a thread
    start and a blocked thread per request at hundreds of requests per second. A hand-off whose
    target has no service yet is retried every 50 ms until the task's deadline (at least
    ``timeout_s`` after it was due); a sent one that is not acknowledged within ``timeout_s`` is
    cancelled and sent again, up to
    ``attempts`` calls in all. Why again: DDS can drop a reply whose reader the server has not
    matched yet (Fast DDS "failed to send response"), and the servers answer a repeated hand-off
    of a task with their first acknowledgement without running it twice (``edge_core.RecentAcks``).
    ``fail(task_id, reason)`` is called once for every hand-off that did not land (refused,
    unreachable, unknown, silent, or still open at ``stop(reason)``), ``acknowledged(task_id)``
    (optional) once for every one accepted;
    the acknowledgements arrive on the thread that completes the futures (the gateway's hot path,
    an edge server's I/O executor).
    """

    RETRY_S = 0.05

    def __init__(self, client_for: Callable[[str], Any], fail: Callable[[str, str], None], timeout_s: float,
                 attempts: int = 2, acknowledged: Callable[[str], None] | None = None, name: str = "hand-offs"):
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self._client_for, self._fail, self.timeout_s, self.attempts = client_for, fail, timeout_s, attempts
        self._acknowledged_cb = acknowledged
        self._due: list[_HandOff] = []
        self._sent: dict[int, _HandOff] = {}  # seq -> hand-off awaiting its acknowledgement
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stopped = False
        self._stop_reason: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def schedule(self, delay_s: float, request: Any, target_id: str) -> None:
        due = time.time() + max(delay_s, 0.0)
        h = _HandOff(due, next(self._seq), request, target_id)
        # A target whose service is not discovered yet is waited for until the task's deadline (at
        # least ``timeout_s``): the first tasks of a plant can reach the gateway before discovery
        # has matched it to the cloud's service, and a failure then helps nobody.
        h.give_up_s = max(due + self.timeout_s, _deadline_s(request))
        with self._cv:
            if not self._stopped:
                heapq.heappush(self._due, h)
                self._cv.notify()
                return
            why = self._stop_reason
        if why is not None:  # scheduled by a thread that did not see the stop yet
            self._fail(request.task.task_id, f"not handed to {target_id}: {why}")

    def stop(self, reason: str | None = None) -> None:
        """Stop the thread. With ``reason`` every hand-off still queued or not acknowledged (and any
        scheduled later) fails with it; without, they are dropped (nothing can be reported any more)."""
        with self._cv:
            self._stopped = True
            self._stop_reason = reason
            self._cv.notify()
        self._thread.join(timeout=2.0)
        with self._cv:  # after the join: a hand-off the thread was sending is back in one of them
            open_ = sorted(self._due) + sorted(self._sent.values())
            self._due, self._sent = [], {}
        for h in open_:
            if h.future is not None:
                h.future.cancel()
            if reason is not None:
                self._fail(h.request.task.task_id, f"not handed to {h.target_id}: {reason}")

    def pending(self) -> int:
        with self._cv:
            return len(self._due) + len(self._sent)

    def _run(self) -> None:
        while True:
            failed: list[tuple[_HandOff, str]] = []
            ready: list[_HandOff] = []
            with self._cv:
                if self._stopped:
                    return
                now = time.time()
                while self._due and self._due[0].due_s <= now:
                    ready.append(heapq.heappop(self._due))
                for seq, h in list(self._sent.items()):
                    if h.timeout_at_s <= now:
                        del self._sent[seq]
                        h.future.cancel()
                        if h.attempts < self.attempts:
                            ready.append(h)  # sent again below, as it is
                        else:
                            failed.append((h, f"{h.target_id} did not acknowledge the task within "
                                              f"{self.timeout_s:g} s ({h.attempts} attempt(s))"))
                if not ready and not failed:
                    wake = min(([self._due[0].due_s] if self._due else []) +
                               [h.timeout_at_s for h in self._sent.values()], default=now + 1.0)
                    self._cv.wait(max(wake - now, 0.0))
                    continue
            for h in ready:
                why = self._send(h, now)
                if why:
                    failed.append((h, why))
            for h, why in failed:
                self._fail(h.request.task.task_id, why)

    def _send(self, h: _HandOff, now: float) -> str:
        client = self._client_for(h.target_id)
        if client is None:
            return f"{h.target_id} is not a target of this gateway (no SubmitTask client)"
        if not client.service_is_ready():
            if now >= h.give_up_s:
                return f"{h.target_id} is not reachable ({client.srv_name} has no server)"
            with self._cv:
                h.due_s = now + self.RETRY_S
                heapq.heappush(self._due, h)
            return ""
        with self._cv:
            h.timeout_at_s = now + self.timeout_s
            h.attempts += 1
            h.future = client.call_async(h.request)
            self._sent[h.seq] = h
        h.future.add_done_callback(lambda fut, h=h: self._acknowledged(h, fut))
        return ""

    def _acknowledged(self, h: _HandOff, fut) -> None:
        with self._cv:
            # an earlier attempt's future (cancelled or late) says nothing about the current one
            if h.future is not fut or self._sent.pop(h.seq, None) is None:  # or timed out (and failed) already
                return
        if fut.cancelled():
            return
        resp = fut.result()
        if resp is not None and not resp.accepted:
            self._fail(h.request.task.task_id, f"{h.target_id} refused the task: {resp.reason}")
        elif self._acknowledged_cb is not None:
            self._acknowledged_cb(h.request.task.task_id)
