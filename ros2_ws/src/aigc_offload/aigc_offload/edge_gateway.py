"""The edge gateway node: a thin rclpy lifecycle node over ``gateway_core``.

Lifecycle:
- configure: loads the preset and the plant (``deployment.draw_plant``) and the offloading policy:
  a path ending in ``.onnx`` goes through the torch-free runtime (``policies.runtime``), which
  checks the file's contract against the preset; anything else is a heuristic name. A missing or
  mismatched policy fails the transition with one log line naming the problem, unless
  ``fallback_policy`` names a heuristic, which is then used (with a warning).
- activate: subscribes ``/aigc/task_request`` (TaskRequest), ``/aigc/execution_result`` and
  ``/aigc/edge_status``; publishes ``/aigc/decision`` (Decision), ``/aigc/task_result`` (one
  terminal TaskResult per task) and ``/diagnostics`` (DiagnosticArray).
- deactivate / shutdown: every task in flight ends with a FAILED result saying so, before the
  publishers go quiet (a request that arrives meanwhile is rejected with the same reason).

Per task: decide, publish the decision (the device runs its share on seeing it), hand the
offloaded share to the edge server or the cloud (``SubmitTask``) after its modeled upload time
(``emulate_uplink``), then wait for the parts' results and publish the terminal state. A refused
request is answered at once with a REJECTED result whose reason says why.
"""

from __future__ import annotations

import os
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from aigc_offload_interfaces.msg import Decision, EdgeServerStatus, TaskRequest, TaskResult
from aigc_offload_interfaces.srv import SubmitTask

from .lifecycle_main import Autostart, run_node, settle_heap
from .deployment import (TASK_QUEUE_DEPTH, task_stream_qos, CLOUD_NODE, DECISION_TOPIC, EXECUTION_RESULT_TOPIC, REQUEST_TOPIC, RESULT_TOPIC,
                         STATUS_TOPIC, Deployment, draw_plant)
from .gateway_core import STATE_COUNTER, TARGET_CLOUD, TARGET_EDGE, GatewayCore, Request, RequestError, Terminal
from .hand_off import HandOffScheduler
from .hot_path import HotPath
from .log_throttle import ThrottledLog
from .messages import TASK_SERVICE_QOS, from_time, result_msg, task_units, to_time


class PolicyLoadError(RuntimeError):
    """The configured policy cannot be used; ``str()`` names the problem."""


def resolve_policy_path(spec: str) -> str:
    """A relative .onnx path is looked up in the working directory, then among the shipped trained
    policies (``policies/trained/``), so ``factory_distill_s2.onnx`` names the shipped one."""
    from pathlib import Path

    p = Path(spec)
    if p.is_absolute() or p.is_file():
        return spec
    import policies

    shipped = Path(policies.__file__).resolve().parent / "trained" / p
    return str(shipped) if shipped.is_file() else spec


def load_gateway_policy(spec: str, sim):
    """An exported ONNX policy (path ending .onnx) or a heuristic by name, behind one interface."""
    if spec.endswith(".onnx"):
        from pathlib import Path

        spec = resolve_policy_path(spec)
        if not Path(spec).is_file():
            raise PolicyLoadError(f"policy file '{spec}' does not exist")
        try:
            from policies.runtime import load_policy  # torch-free runtime
        except ImportError as exc:
            raise PolicyLoadError(f"the ONNX runtime is not installed ({exc})") from None
        try:
            return load_policy(spec, sim)
        except Exception as exc:  # noqa: BLE001 - contract errors and broken files alike refuse
            raise PolicyLoadError(f"policy file '{spec}' cannot be used: {exc}") from None
    from policies.errors import UserError
    from policies.heuristics import make_policy

    try:
        policy = make_policy(spec, sim)
    except UserError as exc:
        raise PolicyLoadError(str(exc)) from None
    if getattr(policy, "needs_oracle", False):
        raise PolicyLoadError(f"policy '{spec}' needs the simulator's true state (an oracle); a deployed gateway "
                              "cannot run it")
    return policy


class EdgeGateway(Autostart, LifecycleNode):
    def __init__(self, node_name: str = "edge_gateway", **kwargs):
        super().__init__(node_name, **kwargs)
        for name, default in (("preset", "factory"), ("seed", 0), ("num_edge_servers", 0), ("policy", "greedy"),
                              ("fallback_policy", ""), ("result_grace_s", 0.5), ("submit_timeout_s", 1.0),
                              ("diagnostics_period_s", 1.0), ("status_stale_s", 2.0), ("emulate_uplink", True),
                              ("cloud_node", CLOUD_NODE), ("autostart", False)):
            self.declare_parameter(name, default)
        self.core: GatewayCore | None = None
        # a dead edge server fails every task sent to it: one line per 5 s, with the count left out
        self._warn_hand_off = ThrottledLog(lambda text: self.get_logger().warning(text), 5.0)
        self._warn_bad_result = ThrottledLog(lambda text: self.get_logger().warning(text), 5.0)
        self._io = ReentrantCallbackGroup()
        self._handles: list = []
        self._active_timers: list = []
        self._submit_clients: dict[str, object] = {}
        self._hand_offs: HandOffScheduler | None = None
        self._hot: HotPath | None = None
        self._pubs: list = []
        self.setup_autostart()


    def release(self) -> None:
        # after a signal the context is gone and nothing can be published any more
        self._teardown("the gateway shut down" if self.context.ok() else None)

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from policies.errors import UserError
        from policies.scenarios import make_simulator

        g = lambda n: self.get_parameter(n).value  # noqa: E731
        try:
            # a bad period or timeout would fail later, in on_activate or per task, far from its cause
            for name in ("diagnostics_period_s", "submit_timeout_s", "status_stale_s", "result_grace_s"):
                v = float(g(name))
                if not (0.0 < v < float("inf") or (v == 0.0 and name == "result_grace_s")):
                    raise ValueError(f"{name} must be a positive, finite number of seconds, got {g(name)}")
            sim = make_simulator(str(g("preset")), expect="factory")
            n_edges = int(g("num_edge_servers")) or None
            plant = draw_plant(Deployment(preset=str(g("preset")), seed=int(g("seed")), num_edge_servers=n_edges))
        except (UserError, ValueError) as exc:
            self.get_logger().error(f"Refusing to configure: {exc}")
            return TransitionCallbackReturn.FAILURE
        if len(plant.edges) != sim.N:
            from policies.scenarios import make_simulator as mk

            sim = mk(str(g("preset")), {k: v[: len(plant.edges)] for k, v in (
                ("edge_xy_m", sim.preset.edge_xy_m), ("edge_cpu_ghz", sim.preset.edge_cpu_ghz),
                ("edge_storage_mb", sim.preset.edge_storage_mb), ("inter_link_mbps", sim.preset.inter_link_mbps))},
                     expect="factory")
        spec = str(g("policy"))
        try:
            policy, name = load_gateway_policy(spec, sim), spec
        except PolicyLoadError as exc:
            fallback = str(g("fallback_policy"))
            if not fallback:
                self.get_logger().error(f"Refusing to configure: {exc} (no fallback_policy configured).")
                return TransitionCallbackReturn.FAILURE
            try:
                policy, name = load_gateway_policy(fallback, sim), fallback
            except PolicyLoadError as exc2:
                self.get_logger().error(f"Refusing to configure: {exc}; the fallback failed too: {exc2}")
                return TransitionCallbackReturn.FAILURE
            self.get_logger().warning(f"{exc}; using the fallback heuristic '{fallback}'.")
        self.core = GatewayCore(sim, plant, policy, name, status_stale_s=float(g("status_stale_s")),
                                result_grace_s=float(g("result_grace_s")), seed=int(g("seed")))
        if not self._pubs:  # once per configuration: each activation used to add another set
            self._decision_pub = self.create_lifecycle_publisher(Decision, DECISION_TOPIC, task_stream_qos())
            self._result_pub = self.create_lifecycle_publisher(TaskResult, RESULT_TOPIC, task_stream_qos())
            self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
            self._pubs = [self._decision_pub, self._result_pub, self._diag_pub]
        self.get_logger().info(f"Configured: policy {name}, {len(plant.devices)} devices, "
                               f"{len(plant.edges)} edge servers, preset {g('preset')}.")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Requests (decided in arrival order, one at a time) and execution results: per-task traffic,
        # served by the hot path's thread (hot_path.py: rclpy's executor cost ~0.3 ms per message).
        self._hot = HotPath(self)
        self._hot.subscribe(TaskRequest, REQUEST_TOPIC, self._on_request, TASK_QUEUE_DEPTH)
        self._hot.subscribe(TaskResult, EXECUTION_RESULT_TOPIC, self._on_result, TASK_QUEUE_DEPTH)
        self._handles = [
            self.create_subscription(EdgeServerStatus, STATUS_TOPIC, self._on_status, 50, callback_group=self._io),
        ]
        # Every SubmitTask client is made here, before the hot path starts (its wait set is fixed);
        # the hand-off thread only looks them up, and their acknowledgements arrive on the hot path.
        self._submit_clients = {}
        for target in [e.server_id for e in self.core.plant.edges] + ["cloud"]:
            node = self._submit_node(target)
            if node not in self._submit_clients:
                self._submit_clients[node] = self._hot.client(SubmitTask, f"/{node}/submit_task",
                                                                 qos_profile=TASK_SERVICE_QOS)
        self._hand_offs = HandOffScheduler(self._client, self._hand_off_failed,
                                           float(self.get_parameter("submit_timeout_s").value))
        self._active_timers = [
            self.create_timer(0.05, self._sweep, callback_group=self._io),
            self.create_timer(float(self.get_parameter("diagnostics_period_s").value), self._diagnostics,
                              callback_group=self._io),
        ]
        ret = super().on_activate(state)  # the lifecycle publishers are enabled before the first request
        self._hot.start()
        self.get_logger().info(f"Active: deciding tasks from {REQUEST_TOPIC} with {self.core.policy_name}.")
        settle_heap()  # after everything the task path keeps exists (lifecycle_main.settle_heap)
        return ret

    def _teardown(self, why: str | None) -> None:
        """Stop the task path; with ``why`` (the publishers still enabled) every task in flight ends
        with a FAILED result giving it. ``None``: the context is gone, nothing can be sent."""
        if self._hand_offs is not None:  # first: it calls the hot path's clients
            hand_offs, self._hand_offs = self._hand_offs, None  # a request from now on is rejected
            hand_offs.stop(why)  # the hand-offs it held fail with ``why`` (_hand_off_failed)
        if self._hot is not None:
            self._hot.stop()
            self._hot = None
        self._submit_clients = {}
        for h in self._handles:
            self.destroy_subscription(h)
        for t in self._active_timers:
            self.destroy_timer(t)
        self._handles, self._active_timers = [], []
        core = self.core
        if why is not None and core is not None:  # no sweep or result will end them any more
            for term in core.fail_all(TaskResult.FAILED, why):
                self._publish_terminal(term)

    def _destroy_publishers(self) -> None:
        for p in self._pubs:
            self.destroy_lifecycle_publisher(p)
        self._pubs = []

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown("the gateway was deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown(None)  # inactive: nothing in flight since on_deactivate
        self._destroy_publishers()
        self.core = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown("the gateway shut down")  # from active, the publishers are still enabled
        self._destroy_publishers()
        self.core = None
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # a transition that raised (lifecycle_main logs it) leaves the node unconfigured: stop what it started
        self._teardown("the gateway stopped after an error")
        self._destroy_publishers()
        self.core = None
        return TransitionCallbackReturn.SUCCESS

    # -- tasks ----------------------------------------------------------------------------------
    def _reject(self, msg: TaskRequest, reason: str) -> None:
        self.get_logger().warning(f"Rejected task '{msg.task_id}' from '{msg.device_id}': {reason}")
        self._result_pub.publish(result_msg(msg.task_id, msg.device_id, msg.origin, TaskResult.REJECTED, reason,
                                            created_at_s=from_time(msg.created_at)))

    def _on_request(self, msg: TaskRequest) -> None:
        core, hand_offs = self.core, self._hand_offs
        if core is None:
            return
        if hand_offs is None:  # taken by the hot path while the gateway is deactivated
            self._reject(msg, "the gateway is being deactivated")
            return
        kind = {TaskRequest.TASK_REPORT: "report", TaskRequest.TASK_DEFECT_IMAGE: "image"}.get(msg.task_kind)
        if kind is None:
            self._reject(msg, f"task_kind {msg.task_kind} is neither TASK_REPORT (0) nor TASK_DEFECT_IMAGE (1)")
            return
        m = core.models.get(msg.model_name)
        out_mbit = 0.0
        if m is not None:  # the result size is the preset's mean for the kind (the request does not carry it)
            lo, hi = core.preset.report_output_mbit if kind == "report" else core.preset.image_output_mbit
            out_mbit = (lo + hi) / 2
        req = Request(msg.task_id, msg.device_id, msg.origin, kind, msg.model_name, task_units(msg),
                      int(msg.input_bits), int(out_mbit * 1e6), float(msg.deadline_s), from_time(msg.created_at))
        try:
            gd = core.decide(req)
        except RequestError as exc:
            with core.lock:
                core.counters["rejected"] += 1
            self._reject(msg, str(exc))
            return
        self._decision_pub.publish(Decision(
            task_id=msg.task_id, origin=msg.origin, target_kind=gd.target_kind, target_index=gd.target_index,
            target_id=gd.target_id if gd.target_kind == TARGET_EDGE else "", offload_share=gd.share,
            download_model=gd.download, model_name=msg.model_name, policy_name=core.policy_name,
            decision_latency_us=gd.decision_us, decided_at=to_time(time.time())))
        if gd.target_kind in (TARGET_EDGE, TARGET_CLOUD):
            delay = core.upload_delay_s(gd, req) if self.get_parameter("emulate_uplink").value else 0.0
            dec = Decision(task_id=msg.task_id, origin=msg.origin, target_kind=gd.target_kind, target_index=gd.target_index,
                           target_id=gd.target_id, offload_share=gd.share, download_model=gd.download,
                           model_name=msg.model_name, policy_name=core.policy_name)
            # stopped meanwhile: the scheduler fails it at once (_hand_off_failed)
            hand_offs.schedule(delay, SubmitTask.Request(task=msg, decision=dec, hops=0), gd.target_id)

    def _submit_node(self, target_id: str) -> str:
        return str(self.get_parameter("cloud_node").value) if target_id == "cloud" else target_id

    def _client(self, target_id: str):
        """The SubmitTask client of a target (created in on_activate; None for an unknown target).
        Never creates one: this runs in the hand-off thread."""
        return self._submit_clients.get(self._submit_node(target_id))

    def _hand_off_failed(self, task_id: str, reason: str) -> None:
        core = self.core
        if core is None:
            return
        self._warn_hand_off(f"Hand-off of task '{task_id}' failed: {reason}")
        term = core.fail(task_id, TaskResult.FAILED, reason)
        if term is not None:
            self._publish_terminal(term)

    def _on_result(self, msg: TaskResult) -> None:
        core = self.core
        if core is None:
            return
        if msg.state not in STATE_COUNTER:  # the task keeps waiting for a real result, or the sweep
            self._warn_bad_result(f"Ignored an execution result for task '{msg.task_id}' from "
                                  f"'{msg.executed_on}': state {msg.state} is none of DONE, REJECTED, FAILED, "
                                  "DEADLINE_MISSED (0-3).")
            return
        term = core.on_result(msg.task_id, int(msg.part), int(msg.state), msg.reason, msg.executed_on, msg)
        if term is not None:
            self._publish_terminal(term)

    def _publish_terminal(self, term: Terminal) -> None:
        last = next((r[5] for r in reversed(term.results) if r[5] is not None and r[1] == TaskResult.DONE), None)
        any_msg = next((r[5] for r in term.results if r[5] is not None), None)
        ref = last or any_msg
        out = result_msg(term.req.task_id, term.req.device_id, term.req.origin, term.state, term.reason,
                         created_at_s=term.req.created_at_s, executed_on=term.executed_on, energy_j=term.energy_j,
                         cache_hit=bool(ref.cache_hit) if ref else False,
                         downloaded=bool(ref.model_downloaded) if ref else False,
                         hops=int(ref.forwarded_hops) if ref else 0,
                         queue_wait_s=float(ref.queue_wait_s) if ref else 0.0,
                         compute_s=float(ref.compute_s) if ref else 0.0,
                         output=bytes(ref.output) if ref is not None and term.state == TaskResult.DONE else b"",
                         output_mime=ref.output_mime if ref is not None and term.state == TaskResult.DONE else "")
        out.latency_s = term.latency_s
        self._result_pub.publish(out)

    def _on_status(self, msg: EdgeServerStatus) -> None:
        if self.core is not None:
            self.core.on_status(msg.server_id, msg.backlog_s, list(msg.cached_models), msg.cpu_hz, from_time(msg.stamp))

    def _sweep(self) -> None:
        if self.core is not None:
            for term in self.core.sweep():
                self._publish_terminal(term)

    def _diagnostics(self) -> None:
        core = self.core
        if core is None:
            return
        d = core.diagnostics()
        alive = d["edge_servers_alive"].split("/")
        level = DiagnosticStatus.OK if alive[0] == alive[1] else (
            DiagnosticStatus.ERROR if alive[0] == "0" else DiagnosticStatus.WARN)
        msg = DiagnosticArray()
        msg.header.stamp = to_time(time.time())
        msg.status.append(DiagnosticStatus(
            level=level, name=f"{self.get_name()}: offloading", hardware_id=self.get_fully_qualified_name(),
            message=f"{d['edge_servers_alive']} edge servers alive, {d['in_flight']} tasks in flight",
            values=[KeyValue(key=k, value=v) for k, v in d.items()]))
        self._diag_pub.publish(msg)


def make_executor(kind: str):
    """The gateway's executor (``AIGC_GATEWAY_EXECUTOR``: single, multi, events; default single).

    single: rclpy's SingleThreadedExecutor. Measured with ``aigc-offload bench e2e``: the
    MultiThreadedExecutor(4) it replaced added latency per callback (its thread hand-off) and
    lost requests at 500/s. The gateway needs no parallel callbacks: a decision is one short
    callback, and the hand-offs are sent by one thread (``HandOffScheduler``) whose replies
    arrive as future callbacks.
    events: rclpy.experimental.EventsExecutor. Every entity of the gateway is created on the
    executor's thread (``__init__`` and lifecycle callbacks) as it requires, but on the Kilted
    PyPI wheels (rclpy 9.1.2) a service of a node spun by it never answers (lifecycle
    ``get_state`` and a plain service alike; subscriptions work), so the gateway cannot use it.
    """
    if kind == "multi":
        return MultiThreadedExecutor(num_threads=4)
    if kind == "events":
        from rclpy.experimental import EventsExecutor

        return EventsExecutor()
    return SingleThreadedExecutor()


def main(args: list[str] | None = None) -> int:
    return run_node(EdgeGateway, lambda: make_executor(os.environ.get("AIGC_GATEWAY_EXECUTOR", "single")), args)


if __name__ == "__main__":
    sys.exit(main())
