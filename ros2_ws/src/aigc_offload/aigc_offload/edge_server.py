"""The edge server node: a thin rclpy lifecycle node over ``edge_core``.

Lifecycle:
- configure: loads the preset's work model, asks the cloud model server for its catalog
  (``/cloud_model_server/list_models``), fetches the initial models (verified by size and sha256;
  files already in the cache directory with the right digest are kept), builds the core. A missing
  cloud, an unknown initial model, a cache directory that cannot be made or a failed download fails
  the transition with one log line.
- activate: serves ``~/submit_task`` (SubmitTask), publishes ``/aigc/edge_status``
  (EdgeServerStatus) every ``status_period_s`` and ``/aigc/execution_result`` (TaskResult), and
  runs the worker thread that executes the FIFO queue.

A task runs for its modeled compute time ``eta W / f_n`` (``execution: paced``); with
``execution: generative`` the server also runs the real generative model (genmodels, onnxruntime)
inside that time and returns its output. Forwarded tasks go to ``/<peer>/submit_task``; tasks
whose model no server holds go to ``/cloud_model_server/submit_task``.

Parameters: see ``config/edge_server.yaml``.

Threads: the node itself (service, status timer and subscription) is spun by a
SingleThreadedExecutor; every *outgoing* call (catalog, model chunks, forwarding, the cloud) is a
client of a private helper node ``<name>_io`` spun by its own single-threaded executor in a
daemon thread, so a callback of the node (``on_configure`` fetching the initial models, say) may
block on a reply without deadlocking. It replaced a MultiThreadedExecutor(4), which cost about 7 %
of a core per idle server and, intermittently, spun at 40-50 % of a core with nothing to do.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from aigc_offload_interfaces.msg import EdgeServerStatus, TaskResult
from aigc_offload_interfaces.srv import FetchModelChunk, ListModels, SubmitTask

from .lifecycle_main import Autostart, run_node, settle_heap, spin_until_shutdown
from .cloud_model_server import ros_fetch_chunk
from .deployment import TASK_QUEUE_DEPTH, CLOUD_NODE, EXECUTION_RESULT_TOPIC, STATUS_TOPIC
from .edge_core import EdgeServerCore, EdgeTask, ModelCache, PeerStatus, RecentAcks
from .hand_off import HandOffScheduler
from .hot_path import HotPath
from .messages import TASK_SERVICE_QOS, edge_task, from_time, model_work_table, task_result_for, to_time
from .model_fetch import FetchError, FetchStorageError, download_model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _cause(exc: Exception) -> str:
    """A download failure as a sentence: a FetchError's own, any other exception with its type."""
    return str(exc) if isinstance(exc, FetchError) else f"{type(exc).__name__}: {exc}"


class EdgeServer(Autostart, LifecycleNode):
    def release(self) -> None:
        self._deactivate()
        self._release_cache()
        self._io_executor.shutdown(timeout_sec=2.0)
        self._io_thread.join(timeout=5.0)
        self._io_node.destroy_node()

    def _spin_io(self) -> None:
        spin_until_shutdown(self._io_executor, self.context)

    def __init__(self, node_name: str = "edge_server", **kwargs):
        super().__init__(node_name, **kwargs)
        for name, default in (("server_id", ""), ("server_index", 0), ("preset", "factory"), ("cpu_ghz", 10.0),
                              ("storage_mb", 400.0), ("initial_models", [""]), ("peers", [""]),
                              ("execution", "paced"), ("status_period_s", 0.1), ("cache_dir", ""),
                              ("download_chunk_bytes", 1 << 20), ("cloud_node", CLOUD_NODE),
                              ("cloud_wait_s", 20.0), ("forwarding", True), ("inter_link_mbps", 400.0),
                              ("autostart", False)):
            self.declare_parameter(name, default)
        self.server_id = str(self.get_parameter("server_id").value or self.get_name())
        self.core: EdgeServerCore | None = None
        self.manifests: dict[str, object] = {}
        self.cache_path: Path | None = None
        self._tmp_cache = False
        self._chunk_bytes = 1 << 20  # download_chunk_bytes, validated at configure
        self._io_group = ReentrantCallbackGroup()
        self._stop = threading.Event()
        self._stop_why = "deactivated"  # what set _stop, for the result of a task it cut short
        self._worker: threading.Thread | None = None
        self._active_handles: list = []
        self._acks = RecentAcks()
        self._hot: HotPath | None = None
        self._generator = None
        # Outgoing calls live on a helper node with its own executor thread (see the module doc).
        # use_global_arguments=False: the process's ``-r __node:=edgeN`` must not rename it too.
        self._io_node = rclpy.create_node(f"{self.get_name()}_io", namespace=self.get_namespace(),
                                          context=self.context, use_global_arguments=False,
                                          start_parameter_services=False)
        cloud = str(self.get_parameter("cloud_node").value)
        self._fetch_client = self._io_node.create_client(FetchModelChunk, f"/{cloud}/fetch_model_chunk")
        self._list_client = self._io_node.create_client(ListModels, f"/{cloud}/list_models")
        self._cloud_submit = self._io_node.create_client(SubmitTask, f"/{cloud}/submit_task",
                                                        qos_profile=TASK_SERVICE_QOS)
        self._peer_clients: dict[str, object] = {
            peer: self._io_node.create_client(SubmitTask, f"/{peer}/submit_task", qos_profile=TASK_SERVICE_QOS)
            for peer in dict.fromkeys(p for p in self.get_parameter("peers").value if p and p != self.server_id)}
        self._peer_lock = threading.Lock()
        self._cloud_name = cloud
        # forwards to a peer or the cloud, sent from one thread (hand_off.py); task id -> (task, where)
        self._forwarder: HandOffScheduler | None = None
        self._forwards: dict[str, tuple[EdgeTask, str]] = {}
        self._forwards_lock = threading.Lock()
        self._io_executor = SingleThreadedExecutor(context=self.context)
        self._io_executor.add_node(self._io_node)
        self._io_thread = threading.Thread(target=self._spin_io, name=f"{self.server_id}-io", daemon=True)
        self._io_thread.start()
        self._result_pub = self.create_publisher(TaskResult, EXECUTION_RESULT_TOPIC, TASK_QUEUE_DEPTH)
        self.setup_autostart(self._io_group)

    # -- lifecycle ------------------------------------------------------------------------------

    def _fail(self, why: str) -> TransitionCallbackReturn:
        self.get_logger().error(f"Refusing to configure: {why}")
        return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from policies.config import load_preset
        from policies.errors import UserError

        g = lambda n: self.get_parameter(n).value  # noqa: E731
        try:
            preset = load_preset(str(g("preset")))
        except UserError as exc:
            return self._fail(str(exc))
        if preset.scenario != "factory":
            return self._fail(f"preset '{g('preset')}' is for scenario '{preset.scenario}', not factory")
        if float(g("cpu_ghz")) <= 0 or float(g("storage_mb")) <= 0:
            return self._fail("cpu_ghz and storage_mb must be positive")
        if g("execution") not in ("paced", "generative"):
            return self._fail(f"execution must be 'paced' or 'generative', got '{g('execution')}'")
        if int(g("download_chunk_bytes")) <= 0:
            return self._fail(f"download_chunk_bytes must be positive, got {g('download_chunk_bytes')}")
        # read once: a value set later cannot break the downloads of a configured server
        self._chunk_bytes = int(g("download_chunk_bytes"))
        self.work = model_work_table(preset)
        wait_s = float(g("cloud_wait_s"))
        resp = self._list_models(wait_s)
        if isinstance(resp, str):
            return self._fail(resp)
        self.manifests = {m.name: m for m in resp.manifests}
        missing = sorted(set(self.work) - set(self.manifests))
        if missing:
            self.get_logger().warning(f"The cloud catalog lacks preset model(s) {', '.join(missing)}: tasks for them "
                                   "cannot be downloaded here and go to the cloud.")
        cache_dir = str(g("cache_dir"))
        where = Path(cache_dir) / self.server_id if cache_dir else Path(tempfile.gettempdir())
        try:
            path = where if cache_dir else Path(tempfile.mkdtemp(prefix=f"aigc_{self.server_id}_"))
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return self._fail(f"cache directory '{where}' cannot be created ({exc})")
        self.cache_path, self._tmp_cache = path, not cache_dir
        cache = ModelCache(budget_bytes=int(float(g("storage_mb")) * 1e6),
                           sizes={n: w.size_bytes for n, w in self.work.items()})
        self.core = EdgeServerCore(self.server_id, float(g("cpu_ghz")) * 1e9, cache,
                                   forwarding=bool(g("forwarding")) and bool(preset.edge_forwarding),
                                   inter_link_bps=float(g("inter_link_mbps")) * 1e6,
                                   download_bps=preset.cloud_download_mbps * 1e6)
        for name in [m for m in g("initial_models") if m]:
            if name not in self.manifests:
                return self._fail(f"initial model '{name}' is not in the cloud catalog")
            try:
                self._fetch(name)
                self._delete_models(self.core.download_finished(name, True))
            except Exception as exc:  # noqa: BLE001 - rclpy turns an escaped exception into ERROR without a word
                return self._fail(f"initial model '{name}' could not be fetched: {_cause(exc)}")
        self.core.counters["downloads"] = 0  # the warm start is not a cache miss
        if g("execution") == "generative":
            try:
                from .generative import GenerativeRunner

                self._generator = GenerativeRunner(self.cache_path, self.manifests)
            except Exception as exc:  # noqa: BLE001 - any load problem refuses the configuration
                return self._fail(f"generative execution unavailable: {exc}")
        self.get_logger().info(
            f"Configured {self.server_id}: {float(g('cpu_ghz')):g} GHz, storage {float(g('storage_mb')):g} MB, "
            f"cache {sorted(cache.cached)}, execution {g('execution')}.")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        period = float(self.get_parameter("status_period_s").value)
        self._status_pub = self.create_lifecycle_publisher(EdgeServerStatus, STATUS_TOPIC, 10)
        # SubmitTask: per-task traffic, served by the hot path's thread (hot_path.py); the service keeps
        # this node's name (/<node>/submit_task) although the hot path's private node serves it
        self._hot = HotPath(self)
        self._hot.serve(SubmitTask, f"{self.get_fully_qualified_name()}/submit_task", self._on_submit,
                        qos_profile=TASK_SERVICE_QOS)
        self._active_handles = [
            self.create_subscription(EdgeServerStatus, STATUS_TOPIC, self._on_peer_status, 50,
                                     callback_group=self._io_group),
        ]
        self._status_timer = self.create_timer(period, self._publish_status, callback_group=self._io_group)
        self._forwarder = HandOffScheduler(self._forward_client, self._forward_failed, timeout_s=2.0, attempts=2,
                                           acknowledged=self._forward_landed, name=f"{self.server_id}-forwards")
        self._stop.clear()
        self._worker = threading.Thread(target=self._work_loop, name=f"{self.server_id}-worker", daemon=True)
        self._worker.start()
        self._hot.start()
        self.get_logger().info(f"Active: serving {self.get_fully_qualified_name()}/submit_task.")
        settle_heap()  # after everything the task path keeps exists (lifecycle_main.settle_heap)
        return super().on_activate(state)

    def _deactivate(self, why: str = "deactivated") -> None:
        if self._hot is not None:
            self._hot.stop()
            self._hot = None
        self._stop_why = why
        self._stop.set()
        reason = f"{self.server_id} was {why} before the task ran"
        if self._forwarder is not None:
            self._forwarder.stop(reason)  # every forward not yet acknowledged ends (FAILED) with the reason
            self._forwarder = None
        with self._forwards_lock:
            self._forwards.clear()
        if self.core is not None:
            with self.core.lock:
                self.core.lock.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None
        core = self.core
        if core is not None and self._result_pub is not None:
            # queued tasks would otherwise wait for the gateway's sweep, ended with a wrong reason
            for task in core.drain_queue():
                self._acks.forget(task.task_id, task.hops)
                self._result_pub.publish(task_result_for(task, TaskResult.FAILED, reason, f"edge:{self.server_id}",
                                                         queue_wait_s=time.time() - task.received_at_s))
        for h in self._active_handles:
            if hasattr(h, "srv_name"):
                self.destroy_service(h)
            else:
                self.destroy_subscription(h)
        self._active_handles = []
        if getattr(self, "_status_timer", None) is not None:
            self.destroy_timer(self._status_timer)
            self._status_timer = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate("cleaned up")
        self._release_cache()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate("shut down")
        self._release_cache()
        return TransitionCallbackReturn.SUCCESS

    def _release_cache(self) -> None:
        if self._tmp_cache and self.cache_path is not None:
            shutil.rmtree(self.cache_path, ignore_errors=True)
        self.core = None

    # -- helpers --------------------------------------------------------------------------------
    def _list_models(self, wait_s: float):
        """The cloud's catalog, asked again every few seconds until ``wait_s`` has passed; a sentence
        saying what failed otherwise. Why again: a service found by ``wait_for_service`` can still
        drop the first response when the server has not yet matched this client's reply reader
        (Fast DDS logs "failed to send response (timeout)"); seen on a loaded 2-core machine."""
        end = time.monotonic() + wait_s
        if not self._list_client.wait_for_service(timeout_sec=wait_s):
            return f"the cloud model server ({self._list_client.srv_name}) did not answer within {wait_s:g} s"
        attempts = 0
        while (left := end - time.monotonic()) > 0 or attempts == 0:
            attempts += 1
            resp = self._call(self._list_client, ListModels.Request(), max(1.0, min(5.0, left)))
            if resp is not None:
                return resp
            self.get_logger().warning(f"list_models did not answer (attempt {attempts}); asking again.")
        return f"list_models did not answer in {attempts} attempts within {wait_s:g} s"

    def _call(self, client, request, timeout_s: float):
        fut = client.call_async(request)
        done = threading.Event()
        fut.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout_s):
            fut.cancel()
            return None
        return fut.result()

    def _model_path(self, name: str) -> Path:
        m = self.manifests[name]
        return self.cache_path / f"{name}-{m.version}.onnx"

    def _fetch(self, name: str) -> None:
        """Download ``name`` into the cache directory (resumable, verified); keep a verified file."""
        m = self.manifests[name]
        dest = self._model_path(name)
        if dest.exists() and dest.stat().st_size == m.size_bytes and _sha256(dest) == m.sha256:
            return
        fetch = ros_fetch_chunk(self, self._fetch_client, timeout_s=5.0, spin=False)
        last: Exception | None = None
        for _attempt in range(3):  # a transport error keeps the .part: the next attempt resumes
            try:
                download_model(fetch, name, m.version, dest, chunk_bytes=self._chunk_bytes,
                               expected_sha256=m.sha256)
                return
            except FetchStorageError:
                raise  # the disk, not the link: another attempt would fail the same way
            except FetchError as exc:
                last = exc
                self.get_logger().warning(f"Download of {name} failed ({exc}); retrying.")
        raise FetchError(f"model {name} could not be fetched after 3 attempts: {last}")

    def _delete_models(self, names: list[str]) -> None:
        for n in names:
            if n in self.manifests:
                self._model_path(n).unlink(missing_ok=True)

    # -- services and topics --------------------------------------------------------------------
    def _on_submit(self, request, response):
        core = self.core
        if core is None:
            response.accepted, response.reason, response.action = False, f"{self.server_id} is not active", "reject"
            return response
        if request.task.model_name not in self.work:
            response.accepted, response.action = False, "reject"
            response.reason = f"model '{request.task.model_name}' is not in the preset catalog of {self.server_id}"
            return response
        before = self._acks.get(request.task.task_id, int(request.hops))
        if before is not None:  # the gateway sent it again: its first acknowledgement was lost
            self.get_logger().warning(f"Hand-off of {request.task.task_id} repeated; answered as the first time.")
            response.accepted, response.action, response.reason = before.accepted, before.action, before.reason
            response.expected_wait_s = float(before.expected_wait_s)
            return response
        task = edge_task(request.task, request.decision, self.work, hops=int(request.hops))
        adm = core.admit(task)
        self._acks.put(task.task_id, task.hops, adm)
        response.accepted, response.action, response.reason = adm.accepted, adm.action, adm.reason
        response.expected_wait_s = float(adm.expected_wait_s)
        if not adm.accepted:
            return response
        if adm.starts_download:
            threading.Thread(target=self._download, args=(task.model_name,), daemon=True).start()
        elif adm.action.startswith("forward:"):
            self._hand_off(request, adm.action.split(":", 1)[1], task)
        elif adm.action == "cloud":
            self._hand_off(request, None, task)
        return response

    def _download(self, name: str) -> None:
        ok, error = True, ""
        try:
            if name not in self.manifests:
                raise FetchError(f"model {name} is not in the cloud catalog")
            self._fetch(name)
            self.get_logger().info(f"Downloaded and verified {name}.")
        except Exception as exc:  # noqa: BLE001 - a download that does not end holds its tasks until their deadlines
            ok, error = False, _cause(exc)
            self.get_logger().error(f"Download of {name} failed: {error}")
        core = self.core
        if core is not None:
            evicted = core.download_finished(name, ok, error)
            try:
                self._delete_models(evicted)
            except OSError as exc:
                self.get_logger().warning(f"Evicted model(s) {', '.join(evicted)} could not be deleted: {exc}")

    def _hand_off(self, request, peer: str | None, task: EdgeTask) -> None:
        """Forward to a peer (or the cloud) without blocking the service callback: the forwarder
        thread sends it (once more if the acknowledgement is lost; the receiver answers a repeat
        without running the task twice) and a forward that does not land fails the task."""
        if peer is None:
            target, where = self._cloud_name, "the cloud"
        else:
            with self._peer_lock:  # a peer outside ``peers`` (rare): its client is made on first use
                if peer not in self._peer_clients:
                    self._peer_clients[peer] = self._io_node.create_client(SubmitTask, f"/{peer}/submit_task",
                                                                           qos_profile=TASK_SERVICE_QOS)
            target, where = peer, peer
        forwarder = self._forwarder
        if forwarder is None:  # deactivated meanwhile
            self._forward_failed_task(task, where, f"{self.server_id} is not active")
            return
        with self._forwards_lock:
            self._forwards[task.task_id] = (task, where)
        forwarder.schedule(0.0, SubmitTask.Request(task=request.task, decision=request.decision,
                                                   hops=int(request.hops) + 1), target)

    def _forward_client(self, target: str):
        if target == self._cloud_name:
            return self._cloud_submit
        with self._peer_lock:
            return self._peer_clients.get(target)

    def _forward_landed(self, task_id: str) -> None:
        with self._forwards_lock:
            self._forwards.pop(task_id, None)

    def _forward_failed(self, task_id: str, reason: str) -> None:
        with self._forwards_lock:
            entry = self._forwards.pop(task_id, None)
        if entry is not None:
            self._forward_failed_task(entry[0], entry[1], reason)

    def _forward_failed_task(self, task: EdgeTask, where: str, reason: str) -> None:
        self._result_pub.publish(task_result_for(
            task, TaskResult.FAILED, f"{self.server_id} could not hand the task to {where}: {reason}",
            f"edge:{self.server_id}"))
        core = self.core
        if core is not None:
            with core.lock:
                core.counters["failed"] += 1

    def _on_peer_status(self, msg: EdgeServerStatus) -> None:
        if self.core is not None and msg.server_id != self.server_id:
            self.core.update_peer(PeerStatus(msg.server_id, msg.cpu_hz, msg.backlog_s, frozenset(msg.cached_models),
                                             from_time(msg.stamp)))

    def _publish_status(self) -> None:
        core = self.core
        if core is None:
            return
        s = core.status()
        self._status_pub.publish(EdgeServerStatus(
            server_id=self.server_id, server_index=int(self.get_parameter("server_index").value),
            stamp=to_time(time.time()), backlog_s=s["backlog_s"], queue_length=s["queue_length"],
            cached_models=s["cached_models"], storage_used_bytes=s["storage_used_bytes"],
            storage_budget_bytes=s["storage_budget_bytes"], load=s["load"], cpu_hz=s["cpu_hz"]))

    # -- execution ------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        try:
            self._work()
        except Exception as exc:  # noqa: BLE001
            if self.context.ok():
                raise
            # shut down by a signal while a task ran: its result cannot be published any more
            print(f"[INFO] [{self.get_name()}]: worker stopped at shutdown ({type(exc).__name__})", file=sys.stderr)

    def _work(self) -> None:
        where = f"edge:{self.server_id}"
        while not self._stop.is_set():
            core = self.core
            if core is None:
                return
            task = core.next_task(0.2)
            if task is None:
                continue
            busy = 0.0
            if not core.wait_for_model(task, task.deadline_at_s):
                now = time.time()
                if now >= task.deadline_at_s:
                    state, reason, outcome = (TaskResult.DEADLINE_MISSED,
                                              f"deadline passed while {self.server_id} fetched {task.model_name}",
                                              "deadline_missed")
                else:
                    why = core.fetch_error(task.model_name)
                    state, reason, outcome = (TaskResult.FAILED, f"{self.server_id} could not fetch model "
                                              f"{task.model_name}" + (f": {why}" if why else ""), "failed")
                core.finish(task, outcome, 0.0)
                self._result_pub.publish(task_result_for(task, state, reason, where,
                                                         queue_wait_s=now - task.received_at_s))
                continue
            start = time.time()
            wait = start - task.received_at_s
            budget = core.compute_s(task)
            left = task.deadline_at_s - start
            if left <= 0:
                core.finish(task, "deadline_missed", 0.0)
                self._result_pub.publish(task_result_for(
                    task, TaskResult.DEADLINE_MISSED, f"deadline passed while queued at {self.server_id}", where,
                    queue_wait_s=wait))
                continue
            output, mime = b"", ""
            if self._generator is not None:
                try:
                    output, mime = self._generator.run(task, self._model_path(task.model_name))
                except Exception as exc:  # noqa: BLE001 - a model failure is the task's failure
                    busy = time.time() - start
                    core.finish(task, "failed", busy)
                    self._result_pub.publish(task_result_for(
                        task, TaskResult.FAILED, f"generation failed on {self.server_id}: {exc}", where,
                        queue_wait_s=wait, compute_s=busy))
                    continue
            # Hold the task for its modeled compute time, cut at the deadline (abort rule).
            self._stop.wait(max(min(budget, left) - (time.time() - start), 0.0))
            busy = time.time() - start
            if self._stop.is_set() and busy < min(budget, left):  # cut short: the work was not done
                core.finish(task, "failed", busy)
                self._result_pub.publish(task_result_for(
                    task, TaskResult.FAILED, f"{self.server_id} was {self._stop_why} while the task ran "
                    f"({busy:.3f} s of {budget:.3f} s compute)", where, queue_wait_s=wait, compute_s=busy))
                continue
            if budget > left:
                core.finish(task, "deadline_missed", busy)
                self._result_pub.publish(task_result_for(
                    task, TaskResult.DEADLINE_MISSED,
                    f"aborted at the deadline on {self.server_id} after {left:.3f} s of {budget:.3f} s compute",
                    where, queue_wait_s=wait, compute_s=busy))
                continue
            core.finish(task, "done", busy)
            self._result_pub.publish(task_result_for(task, TaskResult.DONE, "", where, queue_wait_s=wait,
                                                     compute_s=busy, output=output, output_mime=mime))


def main(args: list[str] | None = None) -> int:
    return run_node(EdgeServer, SingleThreadedExecutor, args)


if __name__ == "__main__":
    sys.exit(main())
