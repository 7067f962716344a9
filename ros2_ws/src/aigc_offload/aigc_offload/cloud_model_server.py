"""The cloud model server: a thin rclpy lifecycle node over ``model_catalog``.

Lifecycle:
- configure: loads and verifies the catalog from parameter ``catalog_dir``; a missing directory,
  a bad index or a file that does not match its manifest fails the transition with one log line.
- activate: creates the services ``~/list_models`` (ListModels), ``~/fetch_model_chunk``
  (FetchModelChunk) and ``~/submit_task`` (SubmitTask: the cloud runs a task itself when the
  decision says cloud or no edge server holds the model); deactivate/cleanup/shutdown destroy them,
  and every accepted task not finished yet ends with a FAILED result saying the cloud was
  deactivated (its acknowledgement is forgotten: a repeated hand-off after reactivation runs it).

Cloud execution follows the simulator (EdgeAIGC eq. 11, docs/papers/factory.md §1.5): the task's
input crosses the shared edge<->cloud backhaul (one FIFO link at ``cloud_backhaul_mbps`` of the
preset), runs at ``cloud_cpu_ghz`` without a queue, and its output comes back over the backhaul;
the result is published on ``/aigc/execution_result`` when that time has passed, or as
DEADLINE_MISSED at the deadline.

Parameters: ``catalog_dir`` (str), ``max_chunk_bytes`` (int, default 1 MiB; larger requests are
served in pieces of this size), ``preset`` (factory preset with the work model and cloud links,
default "factory"), ``autostart`` (bool, default false: configure and activate without an
external lifecycle manager).

Run: ``python -m aigc_offload.cloud_model_server --ros-args -p catalog_dir:=/path``.
"""

from __future__ import annotations

import sys
import threading
import time

from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from aigc_offload_interfaces.msg import ModelManifest as ModelManifestMsg
from aigc_offload_interfaces.msg import TaskResult
from aigc_offload_interfaces.srv import FetchModelChunk, ListModels, SubmitTask

from .edge_core import Admission, RecentAcks
from .lifecycle_main import Autostart, run_node
from .messages import TASK_SERVICE_QOS
from .model_catalog import CatalogError, ModelCatalog

NODE_NAME = "cloud_model_server"
DEFAULT_MAX_CHUNK_BYTES = 1 << 20


class CloudModelServer(Autostart, LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self.declare_parameter("catalog_dir", "")
        self.declare_parameter("max_chunk_bytes", DEFAULT_MAX_CHUNK_BYTES)
        self.declare_parameter("preset", "factory")
        self.declare_parameter("autostart", False)
        self.catalog: ModelCatalog | None = None
        self.work: dict | None = None
        self.backhaul_free_s = 0.0  # when the shared backhaul FIFO is free (POSIX s)
        self._backhaul_lock = threading.Lock()
        # accepted tasks whose result is not published yet: timer -> task (under _tasks_lock)
        self._task_timers: dict[threading.Timer, object] = {}
        self._tasks_lock = threading.Lock()
        self._result_pub = None
        self._acks = RecentAcks()
        self.tasks_run = 0
        self.max_chunk_bytes = DEFAULT_MAX_CHUNK_BYTES
        self._data_services: list = []
        self.chunks_served = 0
        self.setup_autostart()

    # -- lifecycle -------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        catalog_dir = str(self.get_parameter("catalog_dir").value or "")
        max_chunk = int(self.get_parameter("max_chunk_bytes").value)
        if max_chunk <= 0:
            self.get_logger().error(f"Refusing to configure: max_chunk_bytes must be positive, got {max_chunk}.")
            return TransitionCallbackReturn.FAILURE
        if not catalog_dir:
            self.get_logger().error("Refusing to configure: parameter catalog_dir is not set.")
            return TransitionCallbackReturn.FAILURE
        try:
            catalog = ModelCatalog.load(catalog_dir)
        except CatalogError as exc:
            self.get_logger().error(f"Refusing to configure: {exc}")
            return TransitionCallbackReturn.FAILURE
        from policies.config import load_preset
        from policies.errors import UserError

        try:
            preset = load_preset(str(self.get_parameter("preset").value))
        except UserError as exc:
            self.get_logger().error(f"Refusing to configure: {exc}")
            return TransitionCallbackReturn.FAILURE
        if preset.scenario != "factory":
            self.get_logger().error(f"Refusing to configure: preset '{preset.scenario}' is not a factory preset.")
            return TransitionCallbackReturn.FAILURE
        from .messages import model_work_table

        self.work = model_work_table(preset)
        self.cloud_hz = preset.cloud_cpu_ghz * 1e9
        self.backhaul_bps = preset.cloud_backhaul_mbps * 1e6
        self.catalog, self.max_chunk_bytes = catalog, max_chunk
        from .deployment import TASK_QUEUE_DEPTH, EXECUTION_RESULT_TOPIC

        if self._result_pub is None:  # once: each activation used to add another publisher
            self._result_pub = self.create_publisher(TaskResult, EXECUTION_RESULT_TOPIC, TASK_QUEUE_DEPTH)
        self.get_logger().info(
            f"Catalog {catalog_dir} loaded and verified: {len(catalog)} model(s): "
            + ", ".join(f"{m.name}@{m.version}" for m in catalog.manifests()))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._data_services = [
            self.create_service(ListModels, "~/list_models", self._on_list_models),
            self.create_service(FetchModelChunk, "~/fetch_model_chunk", self._on_fetch_chunk),
            self.create_service(SubmitTask, "~/submit_task", self._on_submit_task, qos_profile=TASK_SERVICE_QOS),
        ]
        self.get_logger().info("Active: serving ~/list_models, ~/fetch_model_chunk and ~/submit_task.")
        return super().on_activate(state)

    def _drop_services(self, why: str = "the cloud was deactivated") -> None:
        from .messages import task_result_for

        for srv in self._data_services:
            self.destroy_service(srv)
        self._data_services = []
        with self._tasks_lock:
            dropped = list(self._task_timers.items())
            self._task_timers.clear()
            for _timer, task in dropped:  # a repeat of its hand-off must not be answered "accepted": it never runs
                self._acks.forget(task.task_id, task.hops)
        for timer, task in dropped:
            timer.cancel()
            if self._result_pub is not None:
                self._result_pub.publish(task_result_for(task, TaskResult.FAILED, f"{why} before the task finished",
                                                         "cloud"))
        if dropped:
            self.get_logger().warning(f"{len(dropped)} accepted task(s) failed: {why} before they finished.")

    def _destroy_publisher(self) -> None:
        if self._result_pub is not None:
            self.destroy_publisher(self._result_pub)
            self._result_pub = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._drop_services()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._drop_services()
        self._destroy_publisher()
        self.catalog = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._drop_services("the cloud shut down")
        self._destroy_publisher()
        self.catalog = None
        return TransitionCallbackReturn.SUCCESS

    # -- services --------------------------------------------------------------------------
    def _on_list_models(self, request, response):
        for m in self.catalog.manifests() if self.catalog else []:
            response.manifests.append(ModelManifestMsg(
                name=m.name, version=m.version, size_bytes=m.size_bytes, sha256=m.sha256, kind=m.kind))
        return response

    def _on_fetch_chunk(self, request, response):
        if self.catalog is None:
            response.ok, response.error = False, "cloud model server is not configured"
            return response
        try:
            m, data = self.catalog.read_chunk(
                request.name, request.version, int(request.offset),
                min(int(request.max_bytes), self.max_chunk_bytes))
        except CatalogError as exc:
            response.ok, response.error = False, f"{type(exc).__name__}: {exc}"
            return response
        except OSError as exc:
            self.get_logger().error(f"Reading {request.name}@{request.version}: {exc}")
            response.ok, response.error = False, f"read failed: {exc}"
            return response
        response.ok = True
        response.data = data
        response.offset = request.offset
        response.total_size_bytes = m.size_bytes
        response.version = m.version
        response.sha256 = m.sha256
        response.eof = request.offset + len(data) >= m.size_bytes
        self.chunks_served += 1
        return response


    def _on_submit_task(self, request, response):
        """Run a task in the cloud: backhaul FIFO up, compute without a queue, backhaul down."""
        from .messages import edge_task, task_result_for

        req = request.task
        if self.work is None or req.model_name not in self.work:
            response.accepted, response.action = False, "reject"
            response.reason = f"the cloud does not know model '{req.model_name}'"
            return response
        before = self._acks.get(req.task_id, int(request.hops))
        if before is not None:  # sent again after a lost acknowledgement: run it once
            self.get_logger().warning(f"Hand-off of {req.task_id} repeated; answered as the first time.")
            response.accepted, response.action, response.reason = before.accepted, before.action, before.reason
            response.expected_wait_s = float(before.expected_wait_s)
            return response
        task = edge_task(req, request.decision, self.work, hops=int(request.hops))
        now = time.time()
        up_s = task.share * task.input_bits / self.backhaul_bps
        with self._backhaul_lock:
            start_up = max(now, self.backhaul_free_s)
            self.backhaul_free_s = start_up + up_s
        compute_s = task.work_cycles / self.cloud_hz
        finish = start_up + up_s + compute_s  # the output (a few kbit) crosses back in microseconds
        response.accepted, response.action, response.expected_wait_s = True, "cloud", start_up - now
        self._acks.put(task.task_id, task.hops, Admission(True, "cloud", "", start_up - now))
        late = finish > task.deadline_at_s
        fire_at = task.deadline_at_s if late else finish

        def publish() -> None:
            with self._tasks_lock:
                if self._task_timers.pop(timer, None) is None:  # dropped (and failed) by _drop_services
                    return
            if late:
                msg = task_result_for(task, TaskResult.DEADLINE_MISSED,
                                      f"the cloud path needs {finish - now:.3f} s, past the deadline", "cloud",
                                      queue_wait_s=start_up - now, compute_s=compute_s)
            else:
                msg = task_result_for(task, TaskResult.DONE, "", "cloud", queue_wait_s=start_up - now,
                                      compute_s=compute_s)
            self.tasks_run += 1
            self._result_pub.publish(msg)

        timer = threading.Timer(max(fire_at - time.time(), 0.0), publish)
        timer.daemon = True
        with self._tasks_lock:
            self._task_timers[timer] = task
        timer.start()
        return response


class FetchChunkError(RuntimeError):
    """The FetchModelChunk service answered ok=false or did not answer in time."""


def ros_fetch_chunk(node, client, timeout_s: float = 5.0, spin: bool = True, executor=None):
    """A ``model_fetch`` transport over a ``FetchModelChunk`` client.

    ``spin=True`` spins ``node`` until the reply arrives, with ``executor`` or a private
    single-threaded executor on the node's context (the caller spins nothing else);
    ``spin=False`` waits on the future (an executor spins ``node`` in another thread).
    """
    if spin and executor is None:
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)

    def fetch_chunk(name: str, version: str, offset: int, max_bytes: int):
        fut = client.call_async(FetchModelChunk.Request(
            name=name, version=version, offset=offset, max_bytes=max_bytes))
        if spin:
            executor.spin_until_future_complete(fut, timeout_sec=timeout_s)
        else:
            done = threading.Event()
            fut.add_done_callback(lambda _f: done.set())
            done.wait(timeout_s)
        if not fut.done():
            fut.cancel()
            raise FetchChunkError(f"no FetchModelChunk reply within {timeout_s} s at offset {offset}")
        resp = fut.result()
        if not resp.ok:
            raise FetchChunkError(resp.error)
        return bytes(resp.data), int(resp.total_size_bytes), resp.sha256, bool(resp.eof)

    return fetch_chunk


def main(args: list[str] | None = None) -> int:
    return run_node(CloudModelServer, SingleThreadedExecutor, args)


if __name__ == "__main__":
    sys.exit(main())
