"""The MQTT bridge node: a thin rclpy lifecycle node over ``mqtt_bridge.client.BridgeClient``.

Lifecycle:
- configure: reads the password from ``password_file``, connects to the broker (TLS, MQTT 5,
  persistent session) and subscribes to the devices' request, status and execution topics; the
  requests that arrive are acknowledged into the bridge's hand-off queue but not yet handed on. A
  broker that refuses the credentials or cannot be reached within ``connect_timeout_s`` fails
  the transition with one log line.
- activate: publishes ``/aigc/task_request`` and ``/aigc/execution_result``, subscribes
  ``/aigc/decision`` and ``/aigc/task_result``, and starts bridging.
- deactivate: stops handing on, answers requests still waiting in the hand-off queue with an
  ``unavailable`` error reply, publishes the bridge's offline status and disconnects cleanly
  (the broker keeps the session: later requests wait there until activate reconnects).
  cleanup/shutdown: the same, and forgets the tasks.

Per task (every hop keeps the task id):
- MQTT request (validated by the BridgeClient; bad payloads get an ErrorReply on the device's
  error topic) -> TaskRequest on ``/aigc/task_request`` with origin ``mqtt:<site>/<line>/<device>``.
  The hand-off runs in the BridgeClient's dispatcher thread, never in paho's network thread. A
  request the node cannot publish gets an ``unavailable`` ErrorReply and may be sent again.
- Decision on ``/aigc/decision`` for a task that came over MQTT -> ``mqtt_bridge.schemas.Decision``
  on the device's decision topic (TARGET_LOCAL -> target ``device`` with offload_share 1.0).
- TaskResult on ``/aigc/task_result`` for such a task -> ``mqtt_bridge.schemas.TaskResult`` on its
  result topic (``executed_on`` "local" becomes "device"; ``output_bits`` = 8 x len(output)).
- ExecutionReport on a device's execution topic -> TaskResult on ``/aigc/execution_result`` with
  part PART_WHOLE (whole) or PART_LOCAL (local), ``executed_on`` "local".

Tasks are remembered by task_id (device address, created_at, deadline) from the request until
their terminal result. Eviction: on the terminal result; when ``task_retention_s`` has passed
after the task's deadline (the gateway has declared it missed long before; if no terminal state
arrived, e.g. no gateway was active, the device gets ``deadline_missed`` with that reason); and, when
``max_tracked_tasks`` are remembered, the oldest first (logged). A terminal result for a task no
longer remembered is still delivered: its origin names the device's site, line and device.

Parameters: ``host`` (str, "localhost"), ``port`` (int, 8883), ``tls`` (bool, true), ``ca_file``
(str, "": the system CAs), ``username`` (str, "bridge"), ``password_file`` (str, "": no
password; the file holds the password, never the parameter), ``enterprise`` (str, "factory"),
``site`` (str, "+": every site; a site id bridges only that site), ``bridge_id`` (str, "bridge":
presence topic and MQTT client id ``aigc-bridge-<bridge_id>``), ``preset`` (str, "factory": the
known model names for validation; "" accepts any), ``device_kind`` (str, "camera" or
"controller": TaskRequest.device_kind of MQTT devices), ``protocol`` (str, "5" or "3.1.1"),
``connect_timeout_s`` (float, 5.0), ``max_tracked_tasks`` (int, 10000), ``task_retention_s``
(float, 60.0), ``queue_size`` (int, 10000), ``autostart`` (bool, false: configure and activate
without an external lifecycle manager; if that fails, the process exits non-zero).

Run: ``python -m aigc_offload.mqtt_bridge_node --ros-args --params-file config/mqtt_bridge.yaml``.
"""

from __future__ import annotations

import heapq

import logging
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from aigc_offload_interfaces.msg import Decision, TaskRequest, TaskResult

from .lifecycle_main import Autostart, run_node, settle_heap
from .deployment import TASK_QUEUE_DEPTH, task_stream_qos, DECISION_TOPIC, EXECUTION_RESULT_TOPIC, REQUEST_TOPIC, RESULT_TOPIC
from .hot_path import HotPath
from .messages import from_time, origin_filter, result_msg, to_time

NODE_NAME = "mqtt_bridge"

_STATE_NAMES = {TaskResult.DONE: "done", TaskResult.REJECTED: "rejected", TaskResult.FAILED: "failed",
                TaskResult.DEADLINE_MISSED: "deadline_missed"}


@dataclass
class _Task:
    address: object  # mqtt_bridge.topics.DeviceAddress
    created_at_s: float
    expires_at_s: float  # deadline + task_retention_s (POSIX s)
    parts_reported: set = field(default_factory=set)


def origin_of(address) -> str:
    return f"mqtt:{address.site}/{address.line}/{address.device}"


class _RosLogHandler(logging.Handler):
    """mqtt_bridge's Python log records (warnings and up) into the node's ROS logger."""

    def __init__(self, node: LifecycleNode):
        super().__init__(logging.WARNING)
        self.node = node

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if not self.node.context.ok():  # shutting down: rosout is gone
                print(f"[{record.levelname}] [{self.node.get_name()}]: {msg}", file=sys.stderr, flush=True)
                return
            logger = self.node.get_logger()
            (logger.error if record.levelno >= logging.ERROR else logger.warning)(msg)
        except Exception:  # noqa: BLE001 - logging must never raise
            pass


class MqttBridgeNode(Autostart, LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        for name, default in (("host", "localhost"), ("port", 8883), ("tls", True), ("ca_file", ""),
                              ("username", "bridge"), ("password_file", ""), ("enterprise", "factory"),
                              ("site", "+"), ("bridge_id", "bridge"), ("preset", "factory"),
                              ("device_kind", "camera"), ("protocol", "5"), ("connect_timeout_s", 5.0),
                              ("max_tracked_tasks", 10_000), ("task_retention_s", 60.0), ("queue_size", 10_000),
                              ("autostart", False)):
            self.declare_parameter(name, default)
        self.bridge = None
        self._settings = None
        self._known_models: frozenset[str] | None = None
        self._device_kind = TaskRequest.DEVICE_CAMERA
        self._retention_s = 60.0
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        # (expiry, task id, entry) of every remembered task: expiry pops the expired ones instead of scanning
        # up to max_tracked_tasks entries under the lock every second
        self._expiries: list[tuple[float, int, str, _Task]] = []
        self._expiry_seq = 0
        self._lock = threading.Lock()
        self._active = False
        self._handles: list = []
        self._hot: HotPath | None = None
        self._timers: list = []
        self._req_pub = self._exec_pub = None
        self.counters = {"requests": 0, "decisions": 0, "results": 0, "executions": 0, "handoff_failures": 0,
                         "evicted_full": 0, "expired": 0}
        self._log_handler = _RosLogHandler(self)
        logging.getLogger("mqtt_bridge").addHandler(self._log_handler)
        logging.getLogger("mqtt_bridge").propagate = False  # no second copy on stderr
        self.setup_autostart()


    def _p(self, name: str):
        return self.get_parameter(name).value

    # -- broker connection ---------------------------------------------------------------------
    def _make_settings(self):
        from mqtt_bridge.client import MqttSettings

        password = None
        pw_file = str(self._p("password_file"))
        if pw_file:
            try:
                password = Path(pw_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"password_file '{pw_file}' cannot be read: {exc.strerror}") from None
        protocol = str(self._p("protocol"))
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol must be '5' or '3.1.1', not '{protocol}'")
        tls = bool(self._p("tls"))
        ca = str(self._p("ca_file")) or None
        if tls and ca and not Path(ca).is_file():
            raise ValueError(f"ca_file '{ca}' does not exist")
        return MqttSettings(host=str(self._p("host")), port=int(self._p("port")),
                            username=str(self._p("username")) or None, password=password, tls=tls, ca_file=ca,
                            protocol=protocol, connect_timeout_s=float(self._p("connect_timeout_s")))

    def _connect(self) -> str | None:
        """Create the BridgeClient and connect (paused); the reason on failure."""
        from mqtt_bridge.client import BridgeClient, MqttRefused

        s = self._settings
        try:
            bridge = BridgeClient(s, bridge_id=str(self._p("bridge_id")), enterprise=str(self._p("enterprise")),
                                  site=str(self._p("site")) or "+", on_request=self._on_mqtt_request,
                                  on_execution=self._on_mqtt_execution, known_models=self._known_models,
                                  queue_size=int(self._p("queue_size")), paused=True)
        except ValueError as exc:
            return str(exc)
        mlog = logging.getLogger("mqtt_bridge")
        level = mlog.level
        mlog.setLevel(logging.CRITICAL)  # the transition's one log line says why; not paho's retries too
        try:
            bridge.start()
        except MqttRefused as exc:
            return f"broker {s.host}:{s.port} refused user '{s.username}': {str(exc).rsplit(': ', 1)[-1]}"
        except TimeoutError:
            return (f"broker {s.host}:{s.port} not reachable (no CONNACK within {s.connect_timeout_s:g} s; "
                    f"TLS {'on' if s.tls else 'off'})")
        except OSError as exc:
            return f"broker {s.host}:{s.port}: {exc}"
        finally:
            mlog.setLevel(level)
        self.bridge = bridge
        return None

    def _disconnect(self) -> None:
        bridge = self.bridge
        if bridge is not None:
            # self.bridge stays set until stop() has joined the dispatchers: a request or report a
            # dispatcher took after pause() is no longer in the queue stop() answers, so its handler
            # must still have the bridge to send the unavailable reply
            try:
                bridge.pause()
                bridge.stop()  # answers the waiting requests (unavailable), offline status, DISCONNECT
            finally:
                self.bridge = None

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._settings = self._make_settings()
            kind = str(self._p("device_kind"))
            if kind not in ("camera", "controller"):
                raise ValueError(f"device_kind must be 'camera' or 'controller', not '{kind}'")
            self._device_kind = TaskRequest.DEVICE_CONTROLLER if kind == "controller" else TaskRequest.DEVICE_CAMERA
            self._retention_s = float(self._p("task_retention_s"))
            if self._retention_s < 0:
                raise ValueError(f"task_retention_s must be >= 0, got {self._retention_s}")
            if int(self._p("max_tracked_tasks")) < 1:
                raise ValueError("max_tracked_tasks must be at least 1")
            preset = str(self._p("preset"))
            self._known_models = None
            if preset:
                from policies.config import load_preset

                self._known_models = frozenset(m.name for m in load_preset(preset).models)
        except Exception as exc:  # noqa: BLE001 - a bad parameter or preset refuses, with the reason
            self.get_logger().error(f"Refusing to configure: {exc}")
            return TransitionCallbackReturn.FAILURE
        reason = self._connect()
        if reason is not None:
            self.get_logger().error(f"Refusing to configure: {reason}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"Configured: connected to {self._settings.host}:{self._settings.port} as "
                               f"'{self._settings.username}', bridging {self.bridge.enterprise}/{self.bridge.site}.")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.bridge is None:  # reactivated after deactivate: connect again (same persistent session)
            reason = self._connect()
            if reason is not None:
                self.get_logger().error(f"Cannot activate: {reason}")
                return TransitionCallbackReturn.FAILURE
        self._req_pub = self.create_lifecycle_publisher(TaskRequest, REQUEST_TOPIC, task_stream_qos())
        self._exec_pub = self.create_lifecycle_publisher(TaskResult, EXECUTION_RESULT_TOPIC, TASK_QUEUE_DEPTH)
        # decisions and results: per-task traffic, served by the hot path's thread (hot_path.py)
        self._hot = HotPath(self)
        self._hot.subscribe(Decision, DECISION_TOPIC, self._on_decision, TASK_QUEUE_DEPTH,
                            content_filter_options=origin_filter("mqtt:"))
        self._hot.subscribe(TaskResult, RESULT_TOPIC, self._on_result, TASK_QUEUE_DEPTH,
                            content_filter_options=origin_filter("mqtt:"))
        self._hot.start()
        self._timers = [self.create_timer(1.0, self._expire)]
        ret = super().on_activate(state)
        self._active = True
        self.bridge.resume()
        self.get_logger().info(f"Active: MQTT requests -> {REQUEST_TOPIC}, {DECISION_TOPIC} and {RESULT_TOPIC} "
                               f"-> devices, execution reports -> {EXECUTION_RESULT_TOPIC}.")
        settle_heap()  # after everything the task path keeps exists (lifecycle_main.settle_heap)
        return ret

    def _teardown(self) -> None:
        self._active = False
        self._disconnect()
        if self._hot is not None:
            self._hot.stop()
            self._hot = None
        for h in self._handles:
            self.destroy_subscription(h)
        for t in self._timers:
            self.destroy_timer(t)
        self._handles, self._timers = [], []

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        with self._lock:
            self._tasks.clear()
            self._expiries.clear()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self):
        self._active = False
        try:
            self._disconnect()
        finally:
            logging.getLogger("mqtt_bridge").removeHandler(self._log_handler)
        return super().destroy_node()

    # -- task memory ----------------------------------------------------------------------------
    def _remember(self, task_id: str, entry: _Task) -> str | None:
        """Remember a task; the device id of another device already using the id, if any."""
        limit = max(int(self._p("max_tracked_tasks")), 1)
        evicted = []
        with self._lock:
            old = self._tasks.get(task_id)
            if old is not None and old.address.device != entry.address.device:
                return old.address.device
            self._tasks[task_id] = entry
            self._tasks.move_to_end(task_id)
            self._expiry_seq += 1
            heapq.heappush(self._expiries, (entry.expires_at_s, self._expiry_seq, task_id, entry))
            while len(self._tasks) > limit:
                evicted.append(self._tasks.popitem(last=False)[0])
                self.counters["evicted_full"] += 1
        if evicted:
            self.get_logger().warning(f"{len(evicted)} task(s) forgotten (max_tracked_tasks {limit} reached), "
                                      f"oldest first: {evicted[0]}; their decisions no longer reach the device")
        return None

    def _expire(self) -> None:
        now = time.time()
        gone = []
        with self._lock:
            heap = self._expiries
            while heap and heap[0][0] < now:
                _, _, tid, entry = heapq.heappop(heap)
                if self._tasks.get(tid) is entry:  # not settled, evicted or replaced since
                    del self._tasks[tid]
                    gone.append((tid, entry))
            self.counters["expired"] += len(gone)
        # Still remembered means no terminal state ever came (no gateway active, or one that lost the
        # task): the device must hear an end all the same, not silence
        for tid, entry in gone:
            self._send_end(tid, entry.address, "deadline_missed",
                           f"no terminal state arrived from the gateway within task_retention_s "
                           f"({self._retention_s:g} s) after the deadline", now, now - entry.created_at_s)

    # -- MQTT -> ROS (BridgeClient dispatcher threads) ---------------------------------------------
    def _on_mqtt_request(self, inc) -> None:
        from mqtt_bridge.schemas import ErrorCode, TaskKind

        r, addr, bridge = inc.request, inc.address, self.bridge
        if bridge is None:
            return
        created = r.created_at.timestamp()
        entry = _Task(addr, created, created + r.deadline_s + self._retention_s)
        other = self._remember(r.task_id, entry)
        if other is not None:
            bridge.reply_error(addr, ErrorCode.duplicate_task,
                               f"task_id {r.task_id!r} is in use by device {other!r}; task ids must be unique",
                               r.to_json(), task_id=r.task_id, topic=inc.topic)
            return
        report = r.task_kind == TaskKind.report
        msg = TaskRequest(
            task_id=r.task_id, device_id=r.device_id,
            device_kind=self._device_kind,
            task_kind=TaskRequest.TASK_REPORT if report else TaskRequest.TASK_DEFECT_IMAGE,
            model_name=r.model_name, origin=origin_of(addr), input_bits=int(r.input_bits),
            output_tokens=int(r.output_tokens or 0), denoising_steps=int(r.denoising_steps or 0),
            deadline_s=float(r.deadline_s), created_at=to_time(created), prompt=r.prompt or "")
        reason = None
        if not self._active or self._req_pub is None:
            reason = "the bridge node is not active"
        else:
            try:
                self._req_pub.publish(msg)
            except Exception as exc:  # noqa: BLE001 - e.g. the context is shutting down
                reason = f"publishing on {REQUEST_TOPIC} failed: {exc}"
        if reason is not None:
            with self._lock:
                if self._tasks.get(r.task_id) is entry:
                    del self._tasks[r.task_id]
                self.counters["handoff_failures"] += 1
            bridge.forget(addr.device, r.task_id)  # a retry with the same task id is accepted
            bridge.reply_error(addr, ErrorCode.unavailable, f"{reason}; send the request again", r.to_json(),
                               task_id=r.task_id, topic=inc.topic)
            return
        self.counters["requests"] += 1

    def _on_mqtt_execution(self, inc) -> None:
        from mqtt_bridge.schemas import ErrorCode, ExecutionPart, ExecutionState

        rep, addr, bridge = inc.report, inc.address, self.bridge
        if bridge is None:
            return
        with self._lock:
            t = self._tasks.get(rep.task_id)
        if t is not None and t.address.device != addr.device:
            bridge.reply_error(addr, ErrorCode.device_mismatch,
                               f"task {rep.task_id!r} belongs to device {t.address.device!r}", rep.to_json(),
                               task_id=rep.task_id, topic=inc.topic)
            return
        done = rep.state == ExecutionState.done
        msg = result_msg(rep.task_id, rep.device_id, origin_of(t.address if t is not None else addr),
                         TaskResult.DONE if done else TaskResult.FAILED, "" if done else (rep.reason or ""),
                         part=TaskResult.PART_WHOLE if rep.part == ExecutionPart.whole else TaskResult.PART_LOCAL,
                         created_at_s=t.created_at_s if t is not None else None, executed_on="local",
                         compute_s=float(rep.compute_s), energy_j=float(rep.energy_j),
                         now_s=rep.finished_at.timestamp())
        reason = None
        if not self._active or self._exec_pub is None:
            reason = "the bridge node is not active"
        else:
            try:
                self._exec_pub.publish(msg)
            except Exception as exc:  # noqa: BLE001
                reason = f"publishing on {EXECUTION_RESULT_TOPIC} failed: {exc}"
        if reason is not None:
            bridge.forget(addr.device, rep.task_id, part=rep.part)  # else the report sent again is a redelivery
            bridge.reply_error(addr, ErrorCode.unavailable, f"{reason}; send the execution report again",
                               rep.to_json(), task_id=rep.task_id, topic=inc.topic)
            return
        self.counters["executions"] += 1

    # -- ROS -> MQTT (executor thread) -------------------------------------------------------------
    def _on_decision(self, msg: Decision) -> None:
        from mqtt_bridge import schemas

        with self._lock:
            t = self._tasks.get(msg.task_id)
        bridge = self.bridge
        if t is None or bridge is None:
            return  # not a task of this bridge (OPC UA, another bridge) or long forgotten
        try:
            if msg.target_kind == Decision.TARGET_LOCAL:
                target, edge, share = schemas.Target.device, None, 1.0  # all of it, on the device
            elif msg.target_kind == Decision.TARGET_EDGE:
                target, edge = schemas.Target.edge, msg.target_id or f"edge{msg.target_index}"
                share = min(max(float(msg.offload_share), 0.0), 1.0)
            else:
                target, edge, share = schemas.Target.cloud, None, min(max(float(msg.offload_share), 0.0), 1.0)
            decided = from_time(msg.decided_at) or time.time()
            out = schemas.Decision(task_id=msg.task_id, device_id=t.address.device, target=target, edge_server=edge,
                                   offload_share=share, download_model=bool(msg.download_model),
                                   model_name=msg.model_name, policy=msg.policy_name or "unknown",
                                   decided_at=datetime.fromtimestamp(decided, timezone.utc))
            bridge.publish_decision(out, t.address)
            self.counters["decisions"] += 1
        except Exception as exc:  # noqa: BLE001 - one bad message never stops the bridge
            self.get_logger().error(f"Cannot forward the decision for task '{msg.task_id}': {exc}")

    def _address_from_origin(self, origin: str, device_id: str):
        from mqtt_bridge.topics import DeviceAddress, TopicError

        parts = origin[len("mqtt:"):].split("/")
        if len(parts) != 3 or parts[2] != device_id:
            return None
        site = str(self._p("site")) or "+"
        if site != "+" and parts[0] != site:
            return None
        try:
            return DeviceAddress(parts[0], parts[1], parts[2], enterprise=str(self._p("enterprise")))
        except TopicError:
            return None

    def _on_result(self, msg: TaskResult) -> None:
        from mqtt_bridge import schemas

        if not msg.origin.startswith("mqtt:"):
            return
        bridge = self.bridge
        if bridge is None:
            return
        with self._lock:
            t = self._tasks.pop(msg.task_id, None)
        address = t.address if t is not None else self._address_from_origin(msg.origin, msg.device_id)
        if address is None:
            return
        # the same limits as the OPC UA ingress (opcua_ingress_node.result_from_msg)
        try:
            state = _STATE_NAMES.get(int(msg.state), "failed")
            reason = msg.reason or (None if state == "done" else f"the gateway reported {state} without a reason")
            executed = "+".join("device" if p == "local" else p for p in msg.executed_on.split("+"))[:128] or None
            finished = from_time(msg.finished_at) or time.time()
            out = schemas.TaskResult(task_id=msg.task_id, device_id=address.device, state=state,
                                     reason=reason[:1024] if reason else None, executed_on=executed,
                                     latency_s=max(float(msg.latency_s), 0.0),
                                     output_bits=8 * len(msg.output) if len(msg.output) else None,
                                     output_uri=msg.output_uri[:2048] or None,
                                     finished_at=datetime.fromtimestamp(finished, timezone.utc))
        except Exception as exc:  # noqa: BLE001
            # the task is forgotten already: without this the device would never hear its end
            why = " ".join(str(exc).split())
            self.get_logger().error(f"Cannot convert the result of task '{msg.task_id}', sending it as failed: {why}")
            if self._send_end(msg.task_id, address, "failed",
                              f"the gateway's result could not be converted for the device: {why}", time.time()):
                self.counters["results"] += 1
            return
        try:
            bridge.publish_result(out, address)
            self.counters["results"] += 1
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"Cannot forward the result of task '{msg.task_id}': {exc}")

    def _send_end(self, task_id: str, address, state: str, reason: str, now_s: float,
                  latency_s: float | None = None) -> bool:
        """A terminal result the bridge itself gives the device (no usable one came from the gateway)."""
        from mqtt_bridge import schemas

        bridge = self.bridge
        try:
            if bridge is None:
                raise RuntimeError("the bridge is disconnected")
            bridge.publish_result(schemas.TaskResult(
                task_id=task_id, device_id=address.device, state=state, reason=reason[:1024],
                latency_s=max(latency_s, 0.0) if latency_s is not None else None,
                finished_at=datetime.fromtimestamp(now_s, timezone.utc)), address)
            return True
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"Cannot send task '{task_id}' its end ({state}: {reason}): {exc}")
            return False


def main(args: list[str] | None = None) -> int:
    return run_node(MqttBridgeNode, SingleThreadedExecutor, args)


if __name__ == "__main__":
    sys.exit(main())
