"""Per-task subscriptions and services served by one thread over a fixed wait set.

Why: rclpy's executors rebuild their wait set in Python on every wake-up, create a task and a
coroutine per callback and walk every entity of the node (lifecycle and parameter services
included). Measured here on one subscription at ~400 messages/s: 290-380 us of CPU per message
with a SingleThreadedExecutor, 125 us with a fixed wait set (the rest is DDS and deserialization).
At 500 tasks/s every node of the task path handles several messages per task, so that overhead
alone was about a core of the 2-core machine.

A :class:`HotPath` owns a private node (``<owner>_hot``: not in any executor, no parameter
services, not renamed by the process's ``__node:=``) and a thread that waits on that node's
subscriptions, services and clients only, takes every message, request or response that is ready,
and calls the callback in that thread. Services answer with the callback's return value; a
client's ``call_async`` (from any thread) gets its future completed in that thread. Everything else of the
owner (lifecycle services, parameters, timers, low-rate topics) stays on its normal executor, so
callbacks of a HotPath may run concurrently with the owner's executor: they must use the owner's
locks as any multi-threaded callback does.

An exception in a callback (or in sending a service's reply) is logged with the message's topic
and the thread goes on: one bad message must not stop the path every other task takes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import rclpy
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

# Messages taken from one subscription per wake-up before the others get their turn.
TAKE_BURST = 64
# The longest wait: a context shut down by a signal does not wake the wait set, so the thread looks
# at ctx.ok() at least this often (stop() wakes it at once through a guard condition).
WAIT_NS = 200_000_000


@dataclass
class _Entry:
    kind: str  # "subscription" | "service" | "client"
    entity: Any
    callback: Callable[..., Any]
    name: str


class HotPath:
    """Subscriptions and services of a private node, served by one thread (see the module doc)."""

    def __init__(self, owner, suffix: str = "hot"):
        self.owner = owner
        # use_global_arguments=False: the process's ``-r __node:=edge0`` must not rename this node too
        self.node = rclpy.create_node(f"{owner.get_name()}_{suffix}", namespace=owner.get_namespace(),
                                      context=owner.context, use_global_arguments=False,
                                      start_parameter_services=False)
        self._entries: list[_Entry] = []
        self._stop = False
        self._wake = self.node.create_guard_condition(lambda: None)
        self._thread: threading.Thread | None = None
        self.errors = 0

    # -- entities (before start) -----------------------------------------------------------------
    def subscribe(self, msg_type, topic: str, callback: Callable[[Any], None], depth: int, **kwargs):
        if self._thread is not None:
            raise RuntimeError("add entities before start()")
        sub = self.node.create_subscription(msg_type, topic, callback, depth, **kwargs)
        self._entries.append(_Entry("subscription", sub, callback, topic))
        return sub

    def serve(self, srv_type, name: str, callback: Callable[[Any, Any], Any], **kwargs):
        """A service; ``callback(request, response) -> response`` as rclpy's."""
        if self._thread is not None:
            raise RuntimeError("add entities before start()")
        srv = self.node.create_service(srv_type, name, callback, **kwargs)
        self._entries.append(_Entry("service", srv, callback, srv.srv_name))
        return srv

    def client(self, srv_type, name: str, **kwargs):
        """A service client; ``call_async`` from any thread, its future completes in this thread."""
        if self._thread is not None:
            raise RuntimeError("add entities before start()")
        cli = self.node.create_client(srv_type, name, **kwargs)
        self._entries.append(_Entry("client", cli, lambda *_: None, cli.srv_name))
        return cli

    # -- the thread ------------------------------------------------------------------------------
    def start(self) -> "HotPath":
        self._thread = threading.Thread(target=self._run, name=f"{self.node.get_name()}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and destroy the private node (idempotent)."""
        self._stop = True
        if self._thread is not None:
            try:
                self._wake.trigger()
            except Exception:  # noqa: BLE001 - the context may already be shut down
                pass
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self.owner.get_logger().warning(f"{self.node.get_name()}: thread did not stop within {timeout_s:g} s")
            self._thread = None
        if self.node is not None:
            self.node.destroy_node()
            self.node = None

    def _run(self) -> None:
        subs = [e for e in self._entries if e.kind == "subscription"]
        srvs = [e for e in self._entries if e.kind == "service"]
        clis = [e for e in self._entries if e.kind == "client"]
        ctx = self.owner.context
        try:
            handles = [e.entity.handle for e in self._entries] + [self._wake.handle, ctx.handle]
            for h in handles:
                h.__enter__()
        except Exception as exc:  # noqa: BLE001 - destroyed before we started
            self.owner.get_logger().error(f"{self.node.get_name()}: cannot start: {exc}")
            return
        try:
            ws = _rclpy.WaitSet(len(subs), 1, 0, len(clis), len(srvs), 0, ctx.handle)
            while not self._stop and ctx.ok():
                ws.clear_entities()
                for e in subs:
                    ws.add_subscription(e.entity.handle)
                for e in srvs:
                    ws.add_service(e.entity.handle)
                for e in clis:
                    ws.add_client(e.entity.handle)
                ws.add_guard_condition(self._wake.handle)
                ws.wait(WAIT_NS)
                if self._stop:
                    break
                ready_subs = ws.get_ready_entities("subscription")
                ready_srvs = ws.get_ready_entities("service")
                ready_clis = ws.get_ready_entities("client")
                for e in subs:
                    if e.entity.handle.pointer in ready_subs:
                        self._drain_subscription(e)
                for e in srvs:
                    if e.entity.handle.pointer in ready_srvs:
                        self._drain_service(e)
                for e in clis:
                    if e.entity.handle.pointer in ready_clis:
                        self._drain_client(e)
        except Exception as exc:  # noqa: BLE001 - context shut down under us
            if not self._stop and ctx.ok():
                self.owner.get_logger().error(f"{self.node.get_name()}: wait failed: {exc!r}")
        finally:
            for h in reversed(handles):
                try:
                    h.__exit__(None, None, None)
                except Exception:  # noqa: BLE001
                    pass

    def _drain_subscription(self, e: _Entry) -> None:
        sub = e.entity
        for _ in range(TAKE_BURST):
            taken = sub.handle.take_message(sub.msg_type, sub.raw)
            if taken is None:
                return
            try:
                e.callback(taken[0])
            except Exception as exc:  # noqa: BLE001 - see the module doc
                self.errors += 1
                self.owner.get_logger().error(f"callback of {e.name} failed: {type(exc).__name__}: {exc}")

    def _drain_client(self, e: _Entry) -> None:
        cli = e.entity
        for _ in range(TAKE_BURST):
            header, response = cli.handle.take_response(cli.srv_type.Response)
            if header is None:
                return
            try:
                future = cli.get_pending_request(header.request_id.sequence_number)
            except KeyError:  # cancelled (timed out) meanwhile
                continue
            try:
                future.set_result(response)  # no executor: done callbacks run here, at once
            except Exception as exc:  # noqa: BLE001 - see the module doc
                self.errors += 1
                self.owner.get_logger().error(f"response handling of {e.name} failed: {type(exc).__name__}: {exc}")

    def _drain_service(self, e: _Entry) -> None:
        srv = e.entity
        for _ in range(TAKE_BURST):
            taken = srv.handle.service_take_request(srv.srv_type.Request)
            if taken is None:
                return
            request, header = taken
            if header is None:
                return
            try:
                response = e.callback(request, srv.srv_type.Response())
                # inside the try: a wrong return type (TypeError) or a reply DDS cannot send (RCLError)
                # is this request's failure, not the end of the thread that serves every request
                srv.send_response(response, header)
            except Exception as exc:  # noqa: BLE001 - see the module doc; the caller times out
                self.errors += 1
                self.owner.get_logger().error(f"service {e.name} failed: {type(exc).__name__}: {exc}")
