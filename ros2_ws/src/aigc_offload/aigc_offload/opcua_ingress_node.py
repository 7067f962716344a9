"""The gateway's OPC UA ingress as an rclpy lifecycle node: a thin wrapper over
:class:`opcua_devices.ingress.OpcuaIngress`.

The ingress's asyncio loop (asyncua clients, one per device server) runs in its own thread, its
callbacks in its own dispatcher thread; the rclpy executor spins in the main thread. Neither waits
for the other: ROS callbacks hand decisions and results over with ``submit_*`` (which return at
once), and the dispatcher thread publishes requests and execution reports on ROS publishers.

Lifecycle:
- configure: builds the client security from the lab PKI layout (``pki_dir``: client certificate
  and key under ``clients/<client_name>/``, the trust directory ``trusted/``) and the password
  file, and checks every file and endpoint URL; a problem fails the transition with one log line.
- activate: starts the ingress. It connects in the background with exponential backoff: a device
  server that is not up yet is not an error, it shows in the log and in ``/diagnostics``.
- deactivate / cleanup / shutdown: stop the ingress (open deliveries are cancelled).

Topics (``aigc_offload.deployment``):
- OPC UA request -> ``TaskRequest`` on ``REQUEST_TOPIC`` (origin ``opcua:<endpoint>``,
  ``device_kind`` from the device's ``DeviceKind``).
- ``Decision`` on ``DECISION_TOPIC`` for a task from OPC UA -> ``DeliverDecision`` on its device
  (TARGET_LOCAL -> target device; edge/cloud with 0 < offload_share < 1: the device runs its
  ``1 - offload_share`` share itself).
- ``TaskResult`` on ``RESULT_TOPIC`` (the one terminal state) for a task from OPC UA ->
  ``DeliverResult``.
- the devices' reports of their own runs -> ``TaskResult`` on ``EXECUTION_RESULT_TOPIC`` with
  ``part`` PART_WHOLE (decision local) or PART_LOCAL (the device's share of a split task),
  ``executed_on`` "local", ``queue_wait_s`` and ``compute_s`` as measured on the device.

Task memory: a task from OPC UA is remembered by task id (device, origin) from its request until
its terminal ``TaskResult`` passed through, at most ``forget_after_s`` past its deadline, and at
most ``max_tracked_tasks`` tasks (the oldest is forgotten first; counted as ``evicted``, with a
warning). A decision for a forgotten task cannot be routed (a ``Decision`` carries no device id)
and is ignored like any decision for a task of another ingress; a terminal result whose origin
starts with ``opcua:`` carries its device id and is delivered even when the task was forgotten.

Delivery failures (device refused, unreachable within ``delivery_timeout_s``) are logged with the
device and task id and counted; nothing a device or a message does stops the node.

Parameters: ``endpoints`` (string array of opc.tcp URLs), ``pki_dir`` (str), ``client_name``
(str, "gateway"), ``username`` (str, "" = client_name), ``password_file`` (str, "" =
``<pki_dir>/clients/<client_name>/password``), ``publish_interval_ms`` (float, 0 = every event
at once), ``backoff_min_s`` (0.5), ``backoff_max_s`` (16.0), ``delivery_timeout_s`` (30.0),
``max_tracked_tasks`` (int, 10000), ``forget_after_s`` (60.0), ``diagnostics_period_s`` (1.0),
``autostart`` (bool, false).

Run: ``python -m aigc_offload.opcua_ingress_node --ros-args --params-file opcua_ingress.yaml``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from aigc_offload_interfaces.msg import Decision as DecisionMsg
from aigc_offload_interfaces.msg import TaskRequest as TaskRequestMsg
from aigc_offload_interfaces.msg import TaskResult as TaskResultMsg

from .lifecycle_main import Autostart, run_node, settle_heap
from .deployment import TASK_QUEUE_DEPTH, task_stream_qos, DECISION_TOPIC, EXECUTION_RESULT_TOPIC, REQUEST_TOPIC, RESULT_TOPIC
from .hot_path import HotPath
from .log_throttle import ThrottledLog
from .messages import from_time, origin_filter, to_time

NODE_NAME = "opcua_ingress"
ORIGIN_PREFIX = "opcua:"

_STATES_TO_ROS = {"done": TaskResultMsg.DONE, "rejected": TaskResultMsg.REJECTED, "failed": TaskResultMsg.FAILED,
                  "deadline_missed": TaskResultMsg.DEADLINE_MISSED}
_STATES_FROM_ROS = {v: k for k, v in _STATES_TO_ROS.items()}


@dataclass
class _Known:
    """A task from OPC UA, remembered until its terminal result."""

    device_id: str
    origin: str
    forget_at_s: float  # POSIX s: deadline + forget_after_s


# -- conversions (pure; unit-testable without ROS spinning) -------------------------------------------
def request_to_msg(req, device_kind: str, origin: str) -> TaskRequestMsg:
    """mqtt_bridge.schemas.TaskRequest (from a device) -> aigc_offload_interfaces/TaskRequest."""
    report = req.task_kind.value == "report"
    return TaskRequestMsg(
        task_id=req.task_id, device_id=req.device_id,
        device_kind=TaskRequestMsg.DEVICE_CAMERA if device_kind == "camera" else TaskRequestMsg.DEVICE_CONTROLLER,
        task_kind=TaskRequestMsg.TASK_REPORT if report else TaskRequestMsg.TASK_DEFECT_IMAGE,
        model_name=req.model_name, origin=origin, input_bits=int(req.input_bits),
        output_tokens=int(req.output_tokens or 0), denoising_steps=int(req.denoising_steps or 0),
        deadline_s=float(req.deadline_s), created_at=to_time(req.created_at.timestamp()), prompt=req.prompt or "")


def decision_from_msg(msg: DecisionMsg, device_id: str):
    """aigc_offload_interfaces/Decision -> mqtt_bridge.schemas.Decision (raises pydantic ValidationError).

    TARGET_LOCAL -> target device (the whole task, offload_share 1); edge/cloud keep the share
    (0 < share < 1: the device runs 1 - share; a share <= 0 means all of it, as the edge servers read it)."""
    from mqtt_bridge.schemas import Decision

    share = float(msg.offload_share)
    if msg.target_kind == DecisionMsg.TARGET_LOCAL:
        target, edge, share = "device", None, 1.0
    elif msg.target_kind == DecisionMsg.TARGET_EDGE:
        target, edge = "edge", msg.target_id or f"edge{msg.target_index}"
    else:
        target, edge = "cloud", None
    if target != "device" and share <= 0.0:
        share = 1.0
    decided = from_time(msg.decided_at)
    return Decision(task_id=msg.task_id, device_id=device_id, target=target, edge_server=edge,
                    offload_share=min(share, 1.0), download_model=bool(msg.download_model),
                    model_name=msg.model_name, policy=(msg.policy_name or "unknown")[:128],
                    decided_at=datetime.fromtimestamp(decided if decided > 0 else time.time(), timezone.utc))


def result_from_msg(msg: TaskResultMsg):
    """aigc_offload_interfaces/TaskResult (terminal) -> mqtt_bridge.schemas.TaskResult."""
    from mqtt_bridge.schemas import TaskResult

    state = _STATES_FROM_ROS.get(int(msg.state), "failed")
    reason = msg.reason or (None if state == "done" else f"the gateway reported {state} without a reason")
    where = "+".join("device" if p == "local" else p for p in msg.executed_on.split("+")) if msg.executed_on else None
    finished = from_time(msg.finished_at)
    return TaskResult(task_id=msg.task_id, device_id=msg.device_id, state=state, reason=reason[:1024] if reason else None,
                      executed_on=where[:128] if where else None, latency_s=max(float(msg.latency_s), 0.0),
                      output_bits=len(msg.output) * 8 if len(msg.output) else None,
                      output_uri=msg.output_uri[:2048] or None,
                      finished_at=datetime.fromtimestamp(finished if finished > 0 else time.time(), timezone.utc))


def execution_to_msg(report, origin: str) -> TaskResultMsg:
    """opcua_devices ExecutionReport -> aigc_offload_interfaces/TaskResult for EXECUTION_RESULT_TOPIC."""
    r = report.result
    return TaskResultMsg(
        task_id=r.task_id, device_id=r.device_id, origin=origin,
        part=TaskResultMsg.PART_WHOLE if report.part == "whole" else TaskResultMsg.PART_LOCAL,
        state=_STATES_TO_ROS[r.state.value], reason=r.reason or "", latency_s=float(r.latency_s or 0.0),
        executed_on="local", queue_wait_s=float(report.queue_wait_s), compute_s=float(report.compute_s),
        output_uri=r.output_uri or "", finished_at=to_time(r.finished_at.timestamp()))


class _ToRosLog(logging.Handler):
    """Python logging of the ingress (connects, losses, backoff) into the node's ROS log."""

    def __init__(self, node: "OpcuaIngressNode"):
        super().__init__(logging.INFO)
        self.node = node

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            log = self.node.get_logger()
            # One call site per severity: rclpy refuses a call site whose severity changes.
            if record.levelno >= logging.ERROR:
                log.error(text)
            elif record.levelno >= logging.WARNING:
                log.warning(text)
            else:
                log.info(text)
        except Exception:  # noqa: BLE001  logging must never raise into the ingress
            pass


class OpcuaIngressNode(Autostart, LifecycleNode):
    def release(self) -> None:
        self._teardown()


    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        # an overloaded ingress forgets tasks at the request rate: one line per 5 s with the count
        self._warn_evicted = ThrottledLog(lambda text: self.get_logger().warning(text), 5.0)
        self.declare_parameter("endpoints", [""], ParameterDescriptor(
            type=ParameterType.PARAMETER_STRING_ARRAY, description="device server URLs (opc.tcp://host:port/aigc/)"))
        for name, default, doc in (
                ("pki_dir", "", "lab PKI directory (python -m opcua_devices.pki)"),
                ("client_name", "gateway", "client name in the PKI: clients/<name>/{cert.der,key.pem}"),
                ("username", "", "OPC UA user name ('' = client_name)"),
                ("password_file", "", "file holding the password ('' = <pki_dir>/clients/<client_name>/password)"),
                ("publish_interval_ms", 0.0, "subscription publishing interval, ms (0 = every event at once)"),
                ("backoff_min_s", 0.5, "first reconnect delay, s"),
                ("backoff_max_s", 16.0, "reconnect delay cap, s"),
                ("delivery_timeout_s", 30.0, "a decision/result waits at most this long for its device, s"),
                ("max_tracked_tasks", 10_000, "tasks remembered for routing decisions (oldest forgotten first)"),
                ("forget_after_s", 60.0, "a task without a terminal result is forgotten this long after its deadline, s"),
                ("diagnostics_period_s", 1.0, "diagnostics publication period, s"),
                ("autostart", False, "configure and activate without a lifecycle manager")):
            self.declare_parameter(name, default, ParameterDescriptor(description=doc))
        self.ingress = None
        self.security = None
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._lock = threading.Lock()
        self.counters = {"requests": 0, "decisions_delivered": 0, "results_delivered": 0, "executions": 0,
                         "delivery_failures": 0, "evicted": 0, "forgotten": 0, "invalid": 0}
        self._cb = ReentrantCallbackGroup()
        self._handles: list = []
        self._hot: HotPath | None = None
        self._timers: list = []
        self._pubs: list = []
        self._log_handler: _ToRosLog | None = None
        self.setup_autostart()


    def _p(self, name: str):
        return self.get_parameter(name).value

    # -- lifecycle ------------------------------------------------------------------------------
    def _build_security(self):
        """ClientSecurity from the parameters; raises ValueError with one sentence."""
        from opcua_devices.pki import LabPki
        from opcua_devices.security import ClientSecurity

        endpoints = [e for e in (self._p("endpoints") or []) if e]
        if not endpoints:
            raise ValueError("parameter endpoints is empty (give the device servers' opc.tcp:// URLs)")
        bad = [e for e in endpoints if not e.startswith("opc.tcp://")]
        if bad:
            raise ValueError(f"endpoint '{bad[0]}' is not an opc.tcp:// URL")
        pki_dir = str(self._p("pki_dir") or "")
        if not pki_dir:
            raise ValueError("parameter pki_dir is not set")
        if not Path(pki_dir).is_dir():
            raise ValueError(f"PKI directory '{pki_dir}' does not exist")
        client = str(self._p("client_name") or "gateway")
        pki = LabPki(Path(pki_dir))
        pair = pki.client(client)
        for what, path in (("client certificate", pair.cert), ("client key", pair.key)):
            if not Path(path).is_file():
                raise ValueError(f"{what} '{path}' does not exist (enrol the client: python -m opcua_devices.pki "
                                 f"--out {pki_dir} --clients {client})")
        trust = pki.trust_dir
        if not trust.is_dir() or not any(p.is_file() for p in trust.iterdir()):
            raise ValueError(f"trust directory '{trust}' does not exist or holds no certificate")
        pw_file = Path(str(self._p("password_file") or "") or pki.root / "clients" / client / "password")
        try:
            password = pw_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"password file '{pw_file}' cannot be read: {exc.strerror}") from None
        if not password:
            raise ValueError(f"password file '{pw_file}' is empty")
        sec = ClientSecurity(pair.cert, pair.key, trust, str(self._p("username") or client), password)
        try:
            sec.resolved_application_uri()  # the certificate parses and names its application
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"client certificate '{pair.cert}' cannot be used: {exc}") from None
        return endpoints, sec

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.endpoints, self.security = self._build_security()
            if float(self._p("publish_interval_ms")) < 0 or int(self._p("max_tracked_tasks")) < 1:
                raise ValueError("publish_interval_ms must be >= 0 and max_tracked_tasks >= 1")
            if not float(self._p("diagnostics_period_s")) > 0:  # else on_activate fails creating its timer
                raise ValueError(f"diagnostics_period_s must be positive, got {self._p('diagnostics_period_s')}")
        except ValueError as exc:
            self.get_logger().error(f"Refusing to configure: {exc}.")
            return TransitionCallbackReturn.FAILURE
        if not self._pubs:  # once: each activation used to add another set
            self._req_pub = self.create_lifecycle_publisher(TaskRequestMsg, REQUEST_TOPIC, task_stream_qos())
            self._exec_pub = self.create_lifecycle_publisher(TaskResultMsg, EXECUTION_RESULT_TOPIC, TASK_QUEUE_DEPTH)
            self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
            self._pubs = [self._req_pub, self._exec_pub, self._diag_pub]
        self.get_logger().info(f"Configured: {len(self.endpoints)} OPC UA endpoint(s) as user "
                               f"'{self.security.username}', client certificate {self.security.cert}.")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from opcua_devices.ingress import IngressSettings, OpcuaIngress

        settings = IngressSettings(backoff_min_s=float(self._p("backoff_min_s")),
                                   backoff_max_s=float(self._p("backoff_max_s")),
                                   delivery_timeout_s=float(self._p("delivery_timeout_s")),
                                   publish_interval_ms=float(self._p("publish_interval_ms")))
        self._log_handler = _ToRosLog(self)
        lg = logging.getLogger("opcua_devices")
        lg.addHandler(self._log_handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False  # into the ROS log only, not twice
        self.ingress = OpcuaIngress(self.endpoints, self.security, on_request=self._on_opcua_request,
                                    on_device_result=self._on_execution, settings=settings)
        # decisions and results: per-task traffic, served by the hot path's thread (hot_path.py)
        self._hot = HotPath(self)
        self._hot.subscribe(DecisionMsg, DECISION_TOPIC, self._on_decision, TASK_QUEUE_DEPTH,
                            content_filter_options=origin_filter(ORIGIN_PREFIX))
        self._hot.subscribe(TaskResultMsg, RESULT_TOPIC, self._on_result, TASK_QUEUE_DEPTH,
                            content_filter_options=origin_filter(ORIGIN_PREFIX))
        self._handles = []
        self._timers = [self.create_timer(float(self._p("diagnostics_period_s")), self._diagnostics,
                                          callback_group=self._cb)]
        ret = super().on_activate(state)
        # after the publishers are enabled: a request handed over before would be dropped, and the
        # ingress does not hand the same request over twice
        self.ingress.start()  # connects in the background; an absent server is retried with backoff
        self._hot.start()  # after the ingress: a decision or result is handed to a running ingress
        self.get_logger().info(f"Active: OPC UA ingress for {', '.join(self.endpoints)} -> {REQUEST_TOPIC}.")
        settle_heap()  # after everything the task path keeps exists (lifecycle_main.settle_heap)
        return ret

    def _teardown(self) -> None:
        if self._hot is not None:
            self._hot.stop()
            self._hot = None
        for h in self._handles:
            self.destroy_subscription(h)
        for t in self._timers:
            self.destroy_timer(t)
        self._handles, self._timers = [], []
        if self.ingress is not None:
            self.ingress.stop()
            self.ingress = None
        if self._log_handler is not None:
            lg = logging.getLogger("opcua_devices")
            lg.removeHandler(self._log_handler)
            lg.propagate = True
            self._log_handler = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return super().on_deactivate(state)

    def _destroy_publishers(self) -> None:
        for p in self._pubs:
            self.destroy_lifecycle_publisher(p)
        self._pubs = []

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._destroy_publishers()
        self.security = None
        with self._lock:
            self._known.clear()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._destroy_publishers()
        return TransitionCallbackReturn.SUCCESS

    # -- task memory ----------------------------------------------------------------------------
    def _remember(self, task_id: str, device_id: str, origin: str, deadline_at_s: float) -> None:
        limit = int(self._p("max_tracked_tasks"))
        evicted = []
        with self._lock:
            self._known[task_id] = _Known(device_id, origin, deadline_at_s + float(self._p("forget_after_s")))
            self._known.move_to_end(task_id)
            while len(self._known) > limit:
                evicted.append(self._known.popitem(last=False)[0])
                self.counters["evicted"] += 1
        if evicted:
            self._warn_evicted(f"Task memory full ({limit}): forgot task '{evicted[0]}' (its decision can no "
                               "longer be routed; counted as 'evicted' in /diagnostics).")

    def _forget_expired(self) -> None:
        now = time.time()
        with self._lock:
            for tid in [t for t, k in self._known.items() if k.forget_at_s < now]:
                del self._known[tid]
                self.counters["forgotten"] += 1

    def tracked(self) -> int:
        with self._lock:
            return len(self._known)

    # -- OPC UA -> ROS (the ingress's dispatcher thread) ------------------------------------------
    def _origin(self, device_id: str) -> str:
        info = self.ingress.device_info(device_id) if self.ingress is not None else None
        return ORIGIN_PREFIX + (info.url if info else "unknown")

    def _on_opcua_request(self, req) -> None:
        ing = self.ingress
        info = ing.device_info(req.device_id) if ing is not None else None
        origin = ORIGIN_PREFIX + (info.url if info else "unknown")
        msg = request_to_msg(req, info.kind if info else "controller", origin)
        self._remember(req.task_id, req.device_id, origin, req.created_at.timestamp() + req.deadline_s)
        with self._lock:
            self.counters["requests"] += 1
        self._req_pub.publish(msg)

    def _on_execution(self, report) -> None:
        with self._lock:
            known = self._known.get(report.result.task_id)
            self.counters["executions"] += 1
        origin = known.origin if known else self._origin(report.result.device_id)
        self._exec_pub.publish(execution_to_msg(report, origin))

    # -- ROS -> OPC UA (executor threads) -----------------------------------------------------------
    def _delivered(self, what: str, device_id: str, task_id: str, counter: str):
        def done(fut) -> None:  # runs on the ingress loop thread: log and count only
            exc = fut.exception() if not fut.cancelled() else None
            with self._lock:
                self.counters[counter if exc is None and not fut.cancelled() else "delivery_failures"] += 1
            if fut.cancelled():
                self.get_logger().warning(f"{what} for task '{task_id}' to device '{device_id}' cancelled.")
            elif exc is not None:
                self.get_logger().warning(f"{what} for task '{task_id}' to device '{device_id}' failed: {exc}")
        return done

    def _on_decision(self, msg: DecisionMsg) -> None:
        with self._lock:
            known = self._known.get(msg.task_id)
        ing = self.ingress
        if known is None or ing is None:
            return  # not a task from OPC UA (or forgotten)
        try:
            decision = decision_from_msg(msg, known.device_id)
            fut = ing.submit_decision(decision)
        except Exception as exc:  # noqa: BLE001  a bad message must not stop the node
            with self._lock:
                self.counters["invalid"] += 1
                self.counters["delivery_failures"] += 1
            self.get_logger().error(f"Decision for task '{msg.task_id}' to device '{known.device_id}' cannot be "
                                    f"delivered: {exc}")
            return
        fut.add_done_callback(self._delivered("Decision", known.device_id, msg.task_id, "decisions_delivered"))

    def _on_result(self, msg: TaskResultMsg) -> None:
        with self._lock:
            known = self._known.pop(msg.task_id, None)
        ing = self.ingress
        if ing is None or (known is None and not msg.origin.startswith(ORIGIN_PREFIX)):
            return  # a task of another ingress
        device_id = known.device_id if known else msg.device_id
        try:
            result = result_from_msg(msg)
            if result.device_id != device_id:
                result = result.model_copy(update={"device_id": device_id})
            fut = ing.submit_result(result)
        except Exception as exc:  # noqa: BLE001
            with self._lock:
                self.counters["invalid"] += 1
                self.counters["delivery_failures"] += 1
            self.get_logger().error(f"Result for task '{msg.task_id}' to device '{device_id}' cannot be "
                                    f"delivered: {exc}")
            return
        fut.add_done_callback(self._delivered("Result", device_id, msg.task_id, "results_delivered"))

    # -- diagnostics ------------------------------------------------------------------------------
    def _diagnostics(self) -> None:
        self._forget_expired()
        ing = self.ingress
        if ing is None:
            return
        status = ing.status()
        up = sum(s.connected for s in status)
        level = DiagnosticStatus.OK if up == len(status) else DiagnosticStatus.ERROR if up == 0 else DiagnosticStatus.WARN
        with self._lock:
            values = {k: str(v) for k, v in self.counters.items()}
            values["tracked_tasks"] = str(len(self._known))
        values["endpoints_connected"] = f"{up}/{len(status)}"
        for s in status:
            values[f"endpoint {s.url}"] = (f"connected, devices {','.join(s.device_ids)}, connects {s.connects}"
                                          if s.connected else f"not connected: {s.last_error or 'connecting'}")
        msg = DiagnosticArray()
        msg.header.stamp = to_time(time.time())
        msg.status.append(DiagnosticStatus(
            level=level, name=f"{self.get_name()}: OPC UA ingress", hardware_id=self.get_fully_qualified_name(),
            message=f"{up}/{len(status)} OPC UA device servers connected",
            values=[KeyValue(key=k, value=v) for k, v in values.items()]))
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # asyncua logs every connection loss as an ERROR with a traceback; the ingress logs it in one line.
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    return run_node(OpcuaIngressNode, SingleThreadedExecutor, args)


if __name__ == "__main__":
    sys.exit(main())
