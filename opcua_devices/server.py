"""An AIGC device as an OPC UA server: a production-line controller or a defect-detection camera.

The device asks for generated content by raising a ``TaskRequestEventType`` event (from its own
arrival process, a trace replay, or a ``RequestTask`` call by a local PLC program or MES), lists
undecided requests in ``PendingRequests``, receives the gateway's decision and the task's result
through ``DeliverDecision`` / ``DeliverResult``, runs its part of the task itself (with a pluggable
executor: all of it when the decision says ``device``, the share ``1 - offload_share`` of a task
split with an edge server or the cloud), reports that run with a ``TaskExecutedEventType`` event
(part ``whole`` or ``local``, listed in ``PendingExecutions`` until the task ends), and raises a
``TaskFinishedEventType`` event for every terminal state it records. The terminal state comes
from the gateway (``DeliverResult``), for local and split tasks too; without one, the device ends
the task ``result_grace_s`` after its deadline (with its own run's outcome when it ran the whole
task, else ``deadline_missed``). The information model is in :mod:`opcua_devices.model`, the security
in :mod:`opcua_devices.security`.

    python -m opcua_devices.server --kind camera --device-id cam01 --port 4841 --pki pki

Every method call is checked; a malformed one gets a Bad status code (with the sentence in the
offending argument's DiagnosticInfo) and the sentence in ``LastError``. Nothing a client sends
stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import itertools
import json
import logging
import signal
import sys
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from pydantic import ValidationError

from mqtt_bridge.schemas import Decision, ErrorCode, Target, TaskKind, TaskRequest, TaskResult, TerminalState

from . import model as m
from .executor import CostModelExecutor, Executor, local_share, run_executor
from .pki import device_application_uri
from .security import ServerSecurity, apply_server_security
from .tasks import PlannedTask

log = logging.getLogger("opcua_devices.server")

_INT_TYPES = {ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
              ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64}
_FLOAT_TYPES = {ua.VariantType.Float, ua.VariantType.Double} | _INT_TYPES
#: how an argument's declared type is checked: which variant types are accepted for it. Integers
#: are accepted in any integer width (a generic client sends Python ints as Int64).
_ACCEPT = {ua.VariantType.String: {ua.VariantType.String}, ua.VariantType.Boolean: {ua.VariantType.Boolean},
           ua.VariantType.DateTime: {ua.VariantType.DateTime}, ua.VariantType.Int32: _INT_TYPES,
           ua.VariantType.Int64: _INT_TYPES, ua.VariantType.Double: _FLOAT_TYPES}

#: pydantic field of a payload model -> index of the method argument that carries it.
_REQUEST_FIELD_ARG = {"task_kind": 0, "model_name": 1, "input_bits": 2, "output_tokens": 3, "denoising_steps": 3,
                      "deadline_s": 4, "prompt": 5}
_DECISION_FIELD_ARG = {"task_id": 0, "target": 1, "edge_server": 2, "offload_share": 3, "download_model": 4,
                       "model_name": 5, "policy": 6, "expected_latency_s": 7, "decided_at": 8}
_RESULT_FIELD_ARG = {"task_id": 0, "state": 1, "reason": 2, "executed_on": 3, "latency_s": 4, "output_bits": 5,
                     "output_uri": 6, "finished_at": 7}

REQUESTED_KEEP = 10_000  # requests kept in DeviceServer.requested
FINISHED_KEEP = 2000  # finished tasks remembered for idempotent re-deliveries
PENDING_LIST_MAX = 1000  # at most this many requests listed in PendingRequests


class RequestError(Exception):
    """A refused method call: OPC UA status, error class, sentence, offending argument."""

    def __init__(self, status: int, code: str, sentence: str, arg_index: int | None = None):
        super().__init__(sentence)
        self.status = status
        self.code = code
        self.sentence = sentence
        self.arg_index = arg_index


def _validation_error(exc: ValidationError, field_arg: dict[str, int], spec: list[ua.Argument],
                      what: str) -> RequestError:
    """First pydantic issue -> RequestError on the argument that carries the field."""
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ())]
    field = loc[0] if loc else ""
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    index = field_arg.get(field)
    if index is not None:
        sentence = f"{what}: argument {spec[index].Name} ({field}) is invalid: {msg}."
    else:
        sentence = f"{what}: {msg}."
    return RequestError(ua.StatusCodes.BadOutOfRange if index is not None else ua.StatusCodes.BadInvalidArgument,
                        ErrorCode.schema_violation.value, sentence, index)


@dataclass
class _Task:
    request: TaskRequest
    t_created: float  # event-loop time at creation, s
    decision: Decision | None = None
    result: TaskResult | None = None
    t_decided: float = 0.0  # event-loop time the decision arrived, s
    local: str | None = None  # the device's own part: None (none) | queued | running | executed
    execution: m.ExecutionReport | None = None


class DeviceServer:
    """One AIGC device served over OPC UA.

    ``tasks``: planned tasks the device requests by itself (``tasks.scenario_tasks`` or
    ``tasks.trace_tasks``), their arrival times multiplied by ``time_scale`` (1 = real time);
    None: the device only requests what ``RequestTask`` calls ask for. ``executor`` runs tasks
    decided for the device (default: :class:`~opcua_devices.executor.CostModelExecutor` with
    ``device_cpu_ghz``, or the middle of the preset's CPU range of the kind). ``catalog`` maps
    the model names the deployment serves to "report" or "image" (default: the preset's models).
    A task without a terminal result from the gateway ``result_grace_s`` after its deadline ends on
    the device: with the device's own run's outcome when it ran the whole task, else
    ``deadline_missed``. ``on_finished(TaskResult)`` / ``on_executed(ExecutionReport)`` are called
    on the server's loop for every terminal state / own run."""

    def __init__(self, device_id: str, kind: str, endpoint: str, security: ServerSecurity, *,
                 preset: str = "factory", overrides: dict | None = None, catalog: dict[str, str] | None = None,
                 executor: Executor | None = None, device_cpu_ghz: float | None = None,
                 tasks: Iterable[PlannedTask] | None = None, time_scale: float = 1.0,
                 result_grace_s: float = 10.0, max_pending: int = 10_000,
                 on_finished: Callable[[TaskResult], None] | None = None,
                 on_executed: Callable[[m.ExecutionReport], None] | None = None,
                 start_when_subscribed: bool = False):
        if kind not in m.DEVICE_KINDS:
            raise ValueError(f"device kind must be one of {', '.join(m.DEVICE_KINDS)}, not '{kind}'")
        if not m.SAFE_ID_RE.match(device_id):
            raise ValueError(f"device id '{device_id}' is not 1-64 of [A-Za-z0-9_-]")
        self.device_id = device_id
        self.kind = kind
        self.endpoint = endpoint
        self.security = security
        self.time_scale = time_scale
        self.start_when_subscribed = start_when_subscribed
        self.result_grace_s = result_grace_s
        self.max_pending = max_pending
        self.on_finished = on_finished
        self.on_executed = on_executed
        from .tasks import make_factory_simulator

        p = make_factory_simulator(preset, overrides).preset
        self.catalog = dict(catalog) if catalog is not None else {x.name: x.kind for x in p.models}
        lo, hi = p.controller_cpu_ghz if kind == "controller" else p.camera_cpu_ghz
        self._planned = tasks
        if executor is None:
            executor = CostModelExecutor(device_cpu_ghz or (lo + hi) / 2, preset=preset, overrides=overrides)
        self.executor = executor
        self._boot = uuid.uuid4().hex[:6]  # task ids stay unique across restarts of the device
        self._seq = 0
        self._tasks: dict[str, _Task] = {}  # open tasks (no result yet)
        # (deadline as POSIX s, task id) of open tasks, earliest first: the sweeper looks only at the
        # overdue ones (scanning every open task 4 times a second took 7% of a device's CPU at 500/s)
        self._deadlines: list[tuple[float, str]] = []
        # PendingRequests / PendingExecutions kept incrementally: each entry's JSON is made once
        # (re-serialising every open task on every change made a request O(open tasks)).
        self._pending_json: OrderedDict[str, str] = OrderedDict()  # undecided open tasks, request order
        self._exec_json: OrderedDict[str, str] = OrderedDict()  # open tasks the device ran its part of
        self._finished: OrderedDict[str, _Task] = OrderedDict()
        self._local_queue: asyncio.Queue[str] = asyncio.Queue()
        self._local_count = 0
        self.counters = {"TasksRequested": 0, "TasksDone": 0, "TasksFailed": 0, "RequestsRefused": 0}
        # the latest requests (tests, replay checks); bounded: a device runs for weeks
        self.requested: deque[TaskRequest] = deque(maxlen=REQUESTED_KEEP)
        self._server: Server | None = None
        self._vars: dict[str, Any] = {}
        self._bg: list[asyncio.Task] = []
        self._event_lock = asyncio.Lock()
        self.types: m.TypeNodes | None = None
        self.object = None

    # -- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"aigc-offload {self.kind} {self.device_id}")
        server.product_uri = "urn:aigc-offload:opcua-devices"
        await server.set_application_uri(device_application_uri(self.device_id))
        await apply_server_security(server, self.security)
        ns = await server.register_namespace(m.NAMESPACE_URI)
        callbacks = {"RequestTask": self._m_request_task, "DeliverDecision": self._m_deliver_decision,
                     "DeliverResult": self._m_deliver_result}
        self.types = await m.build_types(server, ns, callbacks)
        obj = await server.nodes.objects.add_object(ua.NodeId(self.device_id, ns), ua.QualifiedName(self.device_id, ns),
                                                    objecttype=self.types.object_type(self.kind).nodeid)
        self.object = obj
        await (await obj.get_child(f"{ns}:DeviceId")).write_value(ua.Variant(self.device_id, ua.VariantType.String))
        await (await obj.get_child(f"{ns}:DeviceKind")).write_value(ua.Variant(self.kind, ua.VariantType.String))
        for name in m.STATUS_VARIABLES:
            self._vars[name] = await obj.get_child(f"{ns}:{name}")
        # Instantiation copied the method nodes; calls address the instance's methods, so link them.
        for name, cb in callbacks.items():
            server.link_method(await obj.get_child(f"{ns}:{name}"), cb)
        self._gen_request = await server.get_event_generator(self.types.request_event, emitting_node=obj)
        self._gen_finished = await server.get_event_generator(self.types.finished_event, emitting_node=obj)
        self._gen_executed = await server.get_event_generator(self.types.executed_event, emitting_node=obj)
        await server.start()
        self._server = server
        self._bg = [asyncio.create_task(self._local_worker(), name=f"{self.device_id}-local"),
                    asyncio.create_task(self._sweeper(), name=f"{self.device_id}-sweep")]
        if self._planned is not None:
            self._bg.append(asyncio.create_task(self._generate(self._planned), name=f"{self.device_id}-arrivals"))
        log.info("device %s (%s) serving on %s", self.device_id, self.kind, self.endpoint)

    async def stop(self) -> None:
        if self._server is None:
            return
        try:
            await self._set("State", "stopping")
        except Exception:  # noqa: BLE001  best effort on the way down
            pass
        for t in self._bg:
            t.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        self._bg = []
        server, self._server = self._server, None
        await server.stop()

    async def __aenter__(self) -> "DeviceServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def namespace_index(self) -> int:
        assert self.types is not None
        return self.types.ns

    # -- variables and events -------------------------------------------------------------------
    async def _set(self, name: str, value: Any) -> None:
        dv = ua.DataValue(ua.Variant(value, m.STATUS_VARIABLES[name][1]),
                          SourceTimestamp=datetime.now(timezone.utc))
        if self._server is not None:  # straight into the address space (subscriptions still notified)
            await self._server.write_attribute_value(self._vars[name].nodeid, dv)
        else:
            await self._vars[name].write_value(dv)

    async def _bump(self, name: str) -> None:
        self.counters[name] += 1
        await self._set(name, self.counters[name])

    @staticmethod
    def _json_list(entries: OrderedDict[str, str]) -> str:
        """The newest PENDING_LIST_MAX entries, oldest first, as a JSON array."""
        if len(entries) <= PENDING_LIST_MAX:
            return "[" + ",".join(entries.values()) + "]"
        newest = list(itertools.islice(reversed(entries.values()), PENDING_LIST_MAX))
        return "[" + ",".join(reversed(newest)) + "]"

    async def _publish_pending(self) -> None:
        await self._set("PendingRequests", self._json_list(self._pending_json))

    async def _publish_executions(self) -> None:
        await self._set("PendingExecutions", self._json_list(self._exec_json))

    async def _refuse(self, err: RequestError, method: str) -> None:
        self.counters["RequestsRefused"] += 1
        log.warning("device %s refused %s: %s", self.device_id, method, err.sentence)
        await self._set("RequestsRefused", self.counters["RequestsRefused"])
        await self._set("LastError", err.sentence)
        await self._set("LastErrorCode", err.code)

    # -- method plumbing ------------------------------------------------------------------------
    @staticmethod
    def _unpack(args: tuple, spec: list[ua.Argument], method: str) -> list[Any]:
        """Variants -> Python values, checked against the declared arguments."""
        if len(args) < len(spec):
            raise RequestError(ua.StatusCodes.BadArgumentsMissing, ErrorCode.schema_violation.value,
                               f"{method} takes {len(spec)} arguments ({', '.join(a.Name for a in spec)}), "
                               f"got {len(args)}.")
        if len(args) > len(spec):
            raise RequestError(ua.StatusCodes.BadTooManyArguments, ErrorCode.schema_violation.value,
                               f"{method} takes {len(spec)} arguments, got {len(args)}.")
        values = []
        for i, (v, a) in enumerate(zip(args, spec)):
            declared = ua.VariantType(a.DataType.Identifier)
            vt = v.VariantType if isinstance(v, ua.Variant) else None
            if vt not in _ACCEPT[declared] or (isinstance(v, ua.Variant) and v.is_array):
                raise RequestError(ua.StatusCodes.BadTypeMismatch, ErrorCode.schema_violation.value,
                                   f"{method} argument {a.Name} must be of type {declared.name}, "
                                   f"got {vt.name if vt else type(v).__name__}.", i)
            values.append(v.Value)
        return values

    def _bad(self, err: RequestError, n_args: int) -> ua.CallMethodResult:
        res = ua.CallMethodResult()
        res.StatusCode = ua.StatusCode(err.status)
        at = err.arg_index if err.arg_index is not None and err.arg_index < n_args else 0
        res.InputArgumentResults = [ua.StatusCode(err.status if i == at else ua.StatusCodes.Good)
                                    for i in range(n_args)]
        res.InputArgumentDiagnosticInfos = [ua.DiagnosticInfo(AdditionalInfo=err.sentence) if i == at
                                            else ua.DiagnosticInfo() for i in range(n_args)]
        return res

    async def _call(self, method: str, spec: list[ua.Argument], handler, args: tuple):
        try:
            values = self._unpack(args, spec, method)
            return await handler(values)
        except RequestError as err:
            await self._refuse(err, method)
            return self._bad(err, len(args))
        except Exception as exc:  # noqa: BLE001  a bug must not take the device down
            log.exception("device %s: %s failed", self.device_id, method)
            err = RequestError(ua.StatusCodes.BadInternalError, ErrorCode.internal_error.value,
                               f"{method} failed inside the device ({type(exc).__name__}: {exc}); please report.")
            try:
                await self._refuse(err, method)
            except Exception:  # noqa: BLE001
                pass
            return self._bad(err, len(args))

    async def _m_request_task(self, parent: ua.NodeId, *args: Any):
        async def handle(v: list[Any]) -> list[ua.Variant]:
            kind, model_name, input_bits, units, deadline_s, prompt = v
            task_id = await self.request_task(kind, model_name, input_bits, units, deadline_s, prompt or None)
            return [ua.Variant(task_id, ua.VariantType.String)]
        return await self._call("RequestTask", m.REQUEST_TASK_INPUTS, handle, args)

    async def _m_deliver_decision(self, parent: ua.NodeId, *args: Any):
        async def handle(v: list[Any]) -> list[ua.Variant]:
            try:
                decision = m.decision_from_args(self.device_id, v)
            except ValidationError as exc:
                raise _validation_error(exc, _DECISION_FIELD_ARG, m.DELIVER_DECISION_INPUTS, "DeliverDecision") from None
            await self.deliver_decision(decision)
            return []
        return await self._call("DeliverDecision", m.DELIVER_DECISION_INPUTS, handle, args)

    async def _m_deliver_result(self, parent: ua.NodeId, *args: Any):
        async def handle(v: list[Any]) -> list[ua.Variant]:
            try:
                result = m.result_from_args(self.device_id, v)
            except ValidationError as exc:
                raise _validation_error(exc, _RESULT_FIELD_ARG, m.DELIVER_RESULT_INPUTS, "DeliverResult") from None
            await self.deliver_result(result)
            return []
        return await self._call("DeliverResult", m.DELIVER_RESULT_INPUTS, handle, args)

    # -- the device's behaviour ----------------------------------------------------------------------
    async def request_task(self, task_kind: str, model_name: str, input_bits: int, work_units: int,
                           deadline_s: float, prompt: str | None = None) -> str:
        """Validate and raise a task request; returns its task id (raises :class:`RequestError`)."""
        if task_kind not in (TaskKind.report.value, TaskKind.defect_image.value):
            raise RequestError(ua.StatusCodes.BadInvalidArgument, ErrorCode.schema_violation.value,
                               f"TaskKind must be report or defect_image, not '{task_kind}'.", 0)
        if model_name not in self.catalog:
            raise RequestError(ua.StatusCodes.BadInvalidArgument, ErrorCode.unknown_model.value,
                               f"model '{model_name}' is not one the deployment serves "
                               f"({', '.join(sorted(self.catalog))}).", 1)
        makes = "report" if self.catalog[model_name] == "report" else "defect_image"
        if makes != task_kind:
            raise RequestError(ua.StatusCodes.BadInvalidArgument, ErrorCode.schema_violation.value,
                               f"model '{model_name}' makes {makes} tasks, not {task_kind}.", 1)
        if len(self._tasks) >= self.max_pending:
            raise RequestError(ua.StatusCodes.BadTooManyOperations, ErrorCode.overloaded.value,
                               f"the device already has {len(self._tasks)} open tasks; retry later.")
        self._seq += 1
        task_id = f"{self.device_id}-{self._boot}-{self._seq:06d}"
        work = {"output_tokens": work_units} if task_kind == "report" else {"denoising_steps": work_units}
        try:
            req = TaskRequest(task_id=task_id, device_id=self.device_id, task_kind=task_kind, model_name=model_name,
                              input_bits=input_bits, deadline_s=deadline_s, created_at=datetime.now(timezone.utc),
                              prompt=prompt, **work)
        except ValidationError as exc:
            self._seq -= 1
            raise _validation_error(exc, _REQUEST_FIELD_ARG, m.REQUEST_TASK_INPUTS, "RequestTask") from None
        self._tasks[task_id] = _Task(req, asyncio.get_running_loop().time())
        heapq.heappush(self._deadlines, (req.deadline_at().timestamp(), task_id))
        self._pending_json[task_id] = req.model_dump_json(exclude_none=True)
        self.requested.append(req)
        await self._bump("TasksRequested")
        await self._set("LastTaskId", task_id)
        await self._publish_pending()
        async with self._event_lock:  # one generator object: fill and trigger without interleaving
            for name, var in m.request_event_fields(req).items():
                setattr(self._gen_request.event, name, var.Value)
            await self._gen_request.trigger(message=f"{self.device_id} requests {task_kind} task {task_id}")
        return task_id

    def _lookup(self, task_id: str, what: str, arg: int = 0) -> _Task:
        task = self._tasks.get(task_id) or self._finished.get(task_id)
        if task is None:
            raise RequestError(ua.StatusCodes.BadNotFound, "BadNotFound",
                               f"{what} names task '{task_id}', which this device did not request "
                               "(or forgot long ago).", arg)
        return task

    async def deliver_decision(self, decision: Decision) -> None:
        task = self._lookup(decision.task_id, "DeliverDecision")
        if task.decision is not None:
            if task.decision.model_dump(exclude={"decided_at"}) == decision.model_dump(exclude={"decided_at"}):
                return  # a re-delivery (the first reply got lost): nothing to do
            raise RequestError(ua.StatusCodes.BadInvalidState, "BadInvalidState",
                               f"task '{decision.task_id}' was already decided ({task.decision.target.value}).", 1)
        if task.result is not None:
            raise RequestError(ua.StatusCodes.BadInvalidState, "BadInvalidState",
                               f"task '{decision.task_id}' already ended ({task.result.state.value}).", 0)
        task.decision = decision
        self._pending_json.pop(decision.task_id, None)
        task.t_decided = asyncio.get_running_loop().time()
        await self._set("LastDecision", decision.model_dump_json(exclude_none=True))
        await self._publish_pending()
        if local_share(decision) > 0.0:  # target device, or the device's share of a split task
            task.local = "queued"
            self._local_count += 1
            await self._set("LocalQueueLength", self._local_count)
            self._local_queue.put_nowait(decision.task_id)

    async def deliver_result(self, result: TaskResult) -> None:
        task = self._lookup(result.task_id, "DeliverResult")
        if task.result is not None:
            if task.result.state == result.state:
                return  # re-delivery
            raise RequestError(ua.StatusCodes.BadInvalidState, "BadInvalidState",
                               f"task '{result.task_id}' already ended {task.result.state.value}.", 1)
        await self._finish(task, result)  # a queued local part of it is dropped

    async def _finish(self, task: _Task, result: TaskResult) -> None:
        if task.result is not None:
            return
        task.result = result
        self._tasks.pop(result.task_id, None)
        was_pending = self._pending_json.pop(result.task_id, None) is not None
        had_run = self._exec_json.pop(result.task_id, None) is not None
        self._finished[result.task_id] = task
        while len(self._finished) > FINISHED_KEEP:
            self._finished.popitem(last=False)
        await self._bump("TasksDone" if result.state == TerminalState.done else "TasksFailed")
        await self._set("LastResult", result.model_dump_json(exclude_none=True))
        if was_pending:
            await self._publish_pending()
        if had_run:
            await self._publish_executions()
        async with self._event_lock:
            for name, var in m.finished_event_fields(result).items():
                setattr(self._gen_finished.event, name, var.Value)
            await self._gen_finished.trigger(message=f"task {result.task_id} ended {result.state.value}")
        if self.on_finished is not None:
            try:
                self.on_finished(result)
            except Exception:  # noqa: BLE001
                log.exception("on_finished callback failed")

    def _own_result(self, task: _Task, state: TerminalState, reason: str | None, **kw: Any) -> TaskResult:
        now = datetime.now(timezone.utc)
        return TaskResult(task_id=task.request.task_id, device_id=self.device_id, state=state, reason=reason,
                          latency_s=max((now - task.request.created_at).total_seconds(), 0.0), finished_at=now, **kw)

    async def _report(self, task: _Task, state: TerminalState, reason: str | None, queue_wait_s: float,
                      compute_s: float, output_bits: int | None = None, output_uri: str | None = None) -> None:
        """Record and announce the device's run of its part (not a terminal state)."""
        assert task.decision is not None
        whole = task.decision.target == Target.device
        report = m.ExecutionReport(
            part=m.PART_WHOLE if whole else m.PART_LOCAL,
            offload_share=1.0 if whole else float(task.decision.offload_share),
            queue_wait_s=max(queue_wait_s, 0.0), compute_s=max(compute_s, 0.0),
            result=self._own_result(task, state, reason, executed_on="device", output_bits=output_bits,
                                    output_uri=output_uri))
        task.local, task.execution = "executed", report
        if task.result is None and task.request.task_id in self._tasks:
            self._exec_json[task.request.task_id] = report.model_dump_json(exclude_none=True)
        await self._set("LastExecution", report.model_dump_json(exclude_none=True))
        await self._publish_executions()
        async with self._event_lock:
            for name, var in m.executed_event_fields(report).items():
                setattr(self._gen_executed.event, name, var.Value)
            await self._gen_executed.trigger(
                message=f"{self.device_id} ran {report.part} part of task {task.request.task_id}: {state.value}")
        if self.on_executed is not None:
            try:
                self.on_executed(report)
            except Exception:  # noqa: BLE001
                log.exception("on_executed callback failed")

    @staticmethod
    def _output_violation(out: Any) -> str | None:
        """How an executor's output breaks the TaskResult schema (first issue), or None."""
        try:
            TaskResult.model_validate({"task_id": "x", "device_id": "x", "state": TerminalState.done,
                                       "finished_at": datetime.now(timezone.utc), "output_bits": out.output_bits,
                                       "output_uri": out.output_uri})
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err.get("loc", ())) or "output"
            msg = err.get("msg", "invalid value").removeprefix("Value error, ")
            return f"{field} is invalid: {msg[:1].lower() + msg[1:]}"
        return None

    async def _local_worker(self) -> None:
        """Runs the device's parts (whole tasks and local shares), one at a time, in decision order,
        and reports each run; the task's terminal state comes from the gateway."""
        loop = asyncio.get_running_loop()
        while True:
            task_id = await self._local_queue.get()
            task = self._tasks.get(task_id)
            try:
                if task is None or task.result is not None:
                    continue  # the task already ended (e.g. the remote part failed): nothing to run
                wait_s = loop.time() - task.t_decided
                if datetime.now(timezone.utc) >= task.request.deadline_at():
                    await self._report(task, TerminalState.deadline_missed,
                                       "the deadline passed while the task was queued on the device", wait_s, 0.0)
                    continue
                task.local = "running"
                await self._set("State", "executing")
                t0 = loop.time()
                try:
                    out = await run_executor(self.executor, task.request, task.decision)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001  the executor's failure is the task's, not the device's
                    log.warning("device %s: local run of %s failed: %s", self.device_id, task_id, exc)
                    if task.result is None:
                        await self._report(task, TerminalState.failed, f"local execution failed: {exc}"[:1024],
                                           wait_s, loop.time() - t0)
                    continue
                compute_s = loop.time() - t0
                if task.result is not None:
                    continue  # ended meanwhile (the gateway's deadline or a failed remote part)
                violation = self._output_violation(out)
                if violation is not None:
                    # Reported as a failed run: an unreportable one would leave the task running, and
                    # the sweeper waits for a running whole task forever.
                    log.warning("device %s: local run of %s broke the result schema: %s", self.device_id, task_id,
                                violation)
                    await self._report(task, TerminalState.failed,
                                       f"local execution failed: the executor's output breaks the result schema: "
                                       f"{violation}"[:1024], wait_s, compute_s)
                    continue
                late = datetime.now(timezone.utc) > task.request.deadline_at()
                await self._report(task, TerminalState.deadline_missed if late else TerminalState.done,
                                   "the local run finished after the deadline" if late else None, wait_s, compute_s,
                                   out.output_bits, out.output_uri)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("device %s: local worker error on %s", self.device_id, task_id)
            finally:
                self._local_count = max(self._local_count - 1, 0)
                if self._server is not None:
                    await self._set("LocalQueueLength", self._local_count)
                    await self._set("State", "ready")

    async def _sweeper(self, period_s: float = 0.25) -> None:
        """Gives every remote or undecided task a terminal state once its deadline plus grace is over."""
        while True:
            await asyncio.sleep(period_s)
            now = datetime.now(timezone.utc).timestamp()
            later: list[tuple[float, str]] = []
            while self._deadlines and now - self._deadlines[0][0] > self.result_grace_s:
                entry = heapq.heappop(self._deadlines)
                task = self._tasks.get(entry[1])
                if task is None:
                    continue  # finished meanwhile
                if task.local in ("queued", "running") and task.decision is not None \
                        and task.decision.target == Target.device:
                    later.append(entry)  # the device's own run is still to come; it reports, then this sweeps
                    continue
                what = "decision" if task.decision is None else "result"
                try:
                    if task.execution is not None and task.execution.part == m.PART_WHOLE:
                        # No gateway answered, but the device ran the whole task: its run's outcome.
                        await self._finish(task, task.execution.result)
                        continue
                    await self._finish(task, self._own_result(
                        task, TerminalState.deadline_missed,
                        f"no {what} reached the device within {self.result_grace_s:g} s after the deadline"))
                except Exception:  # noqa: BLE001
                    log.exception("device %s: sweeper error", self.device_id)
                    later.append(entry)  # tried again at the next sweep, as before
            for entry in later:
                heapq.heappush(self._deadlines, entry)

    def has_event_subscriber(self) -> bool:
        """A client (a gateway's ingress) monitors this device's events."""
        if self._server is None or self.object is None:
            return False
        subs = self._server.iserver.subscription_service.subscriptions.values()
        watched = [getattr(sub.monitored_item_srv, "_monitored_events", None) for sub in subs]
        if any(w is None for w in watched):  # an asyncua without that attribute: any subscription counts
            return bool(watched)
        return any(self.object.nodeid in w and w[self.object.nodeid] for w in watched)

    async def _generate(self, planned: Iterable[PlannedTask]) -> None:
        """Requests the planned tasks at their arrival times (scaled by ``time_scale``); with
        ``start_when_subscribed`` the arrival process starts once a client monitors the device's
        events, so that no task is raised for a plant whose gateway is not there yet."""
        loop = asyncio.get_running_loop()
        if self.start_when_subscribed:
            while not self.has_event_subscriber():
                await asyncio.sleep(0.05)
            log.info("device %s: a client monitors the requests; the arrival process starts", self.device_id)
        t0 = loop.time()
        for pt in planned:
            delay = t0 + pt.at_s * self.time_scale - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self.request_task(pt.task_kind.value, pt.model_name, pt.input_bits, pt.work_units,
                                        pt.deadline_s)
            except RequestError as err:
                await self._refuse(err, "RequestTask (planned)")
        log.info("device %s: planned tasks exhausted", self.device_id)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opcua_devices.server", description=__doc__.split("\n")[0])
    parser.add_argument("--kind", required=True, choices=sorted(m.DEVICE_KINDS), help="controller or camera")
    parser.add_argument("--device-id", required=True, help="device id (also the certificate's name in the PKI)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=4840)
    parser.add_argument("--pki", help="lab PKI directory (python -m opcua_devices.pki); sets the four below")
    parser.add_argument("--cert", help="server certificate (DER/PEM)")
    parser.add_argument("--key", help="server private key (PEM)")
    parser.add_argument("--trust-dir", help="directory of trusted client/CA certificates")
    parser.add_argument("--users", help="users file: JSON user name -> pbkdf2_sha256 hash")
    parser.add_argument("--allow-anonymous", action="store_true", help="LAB ONLY: accept anonymous sessions")
    parser.add_argument("--preset", default="factory", help="factory preset name or file")
    parser.add_argument("--source", choices=["scenario", "trace", "none"], default="scenario",
                        help="scenario: the preset's arrival process; trace: replay --trace; none: only RequestTask calls")
    parser.add_argument("--trace", help="trace file (aigc-offload trace --scenario factory)")
    parser.add_argument("--index", type=int, help="plant device index whose tasks to generate or replay "
                        "(default: controller 0 or camera 0); with --source trace, -1 replays every task")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (episode k uses episode_rng(seed, k, 0))")
    parser.add_argument("--time-scale", type=float, default=1.0, help="arrival time multiplier (0.1 = 10x faster)")
    parser.add_argument("--cpu-ghz", type=float, help="device CPU for the cost-model executor, GHz")
    parser.add_argument("--result-grace-s", type=float, default=10.0)
    parser.add_argument("--start-when-subscribed", action="store_true",
                        help="start the arrival process (scenario or trace) once a client monitors the device's events")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)

    def fail(sentence: str) -> int:
        # bad input: one sentence and exit code 2, as argparse and the other CLIs (policies.cli, mqtt_bridge)
        print(f"error: {sentence}", file=sys.stderr)
        return 2

    # before the PKI lookup: a bad id would otherwise be reported as a missing certificate
    if not m.SAFE_ID_RE.match(args.device_id):
        return fail(f"device id '{args.device_id}' is not 1-64 of [A-Za-z0-9_-]")
    if args.pki:
        from .pki import LabPki

        pki = LabPki(Path(args.pki))
        pair = pki.device(args.device_id)
        cert, key = args.cert or pair.cert, args.key or pair.key
        trust, users = args.trust_dir or pki.trust_dir, args.users or pki.users_file
    else:
        cert, key, trust, users = args.cert, args.key, args.trust_dir, args.users
    if not (cert and key and trust):
        parser.error("give --pki DIR, or --cert, --key and --trust-dir (and --users)")
    if not users and not args.allow_anonymous:
        parser.error("without --users nobody can log in; give --users or (lab only) --allow-anonymous")
    # checked here: the server loads them only inside the event loop, where a miss is a traceback
    for what, path, given in (("certificate", cert, args.cert), ("private key", key, args.key)):
        if not Path(path).is_file():
            if args.pki and not given:
                return fail(f"device '{args.device_id}' is not enrolled in the PKI {args.pki} (no {what} {path}); "
                            f"enrol it with python -m opcua_devices.pki --out {args.pki} --devices {args.device_id}")
            return fail(f"the {what} file {path} does not exist")
    try:
        security = ServerSecurity.from_files(cert, key, trust, users, allow_anonymous=args.allow_anonymous)
    except (OSError, ValueError) as exc:
        return fail(str(exc))

    from policies.errors import UserError
    from policies.workload import episode_rng

    from .tasks import default_device_index, make_factory_simulator, scenario_tasks, trace_tasks

    try:
        sim = make_factory_simulator(args.preset)
    except UserError as exc:
        return fail(str(exc))
    index = args.index if args.index is not None else default_device_index(sim, args.kind)
    planned: Iterable[PlannedTask] | None = None
    cpu = args.cpu_ghz
    if args.source == "trace":
        if not args.trace:
            parser.error("--source trace needs --trace FILE")
        try:
            planned = list(trace_tasks(args.trace, None if index < 0 else index, preset=args.preset))
        except Exception as exc:  # noqa: BLE001  TraceError and friends: one sentence, no traceback
            return fail(str(exc))
        if cpu is None and planned:
            cpu = planned[0].device_cpu_ghz
    elif not 0 <= index < sim.M:
        parser.error(f"--index must be a plant device index 0..{sim.M - 1}")
    if args.source == "scenario":
        planned = scenario_tasks(index, seed=args.seed, preset=args.preset)
    if cpu is None and 0 <= index < sim.M:
        # The CPU the simulator drew for this device in episode 0 (what the policy was trained on).
        cpu = float(sim.generate_workload(episode_rng(args.seed, 0, 0), 0).params["device_cpu_ghz"][index])
    try:
        device = DeviceServer(args.device_id, args.kind, f"opc.tcp://{args.host}:{args.port}/aigc/", security,
                              preset=args.preset, device_cpu_ghz=cpu, tasks=planned, time_scale=args.time_scale,
                              start_when_subscribed=args.start_when_subscribed,
                              result_grace_s=args.result_grace_s)
    except ValueError as exc:
        return fail(str(exc))
    # asyncua logs a failed bind with its traceback before raising it; the error line below says it
    logging.getLogger("asyncua.server.server").addFilter(
        lambda record: record.msg != "%s error starting server")

    async def run() -> str | None:
        """None after a signal; the sentence when the server cannot start."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await device.start()
        except OSError as exc:
            if exc.filename:  # a certificate, key or trust file it cannot read
                return f"device {args.device_id} cannot read {exc.filename}: {exc.strerror or exc}"
            # the port is taken, the host unknown
            return f"device {args.device_id} cannot serve on {device.endpoint}: {exc.strerror or exc}"
        except ValueError as exc:  # a certificate or key file that is not one, an empty trust directory
            return f"device {args.device_id} cannot start: {exc}"
        try:
            # what the server keeps for its life leaves the collector's reach: full collections of
            # the loaded address space paused request handling for tens of ms
            gc.collect()
            gc.freeze()
            print(json.dumps({"device_id": args.device_id, "kind": args.kind, "endpoint": device.endpoint,
                              "namespace": m.NAMESPACE_URI}), flush=True)
            await stop.wait()
        finally:
            await device.stop()
        return None

    error = asyncio.run(run())
    return fail(error) if error else 0


if __name__ == "__main__":
    sys.exit(main())
