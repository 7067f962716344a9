"""The information model of the AIGC device servers: namespace, types, methods, events.

Browse tree (``ns`` = :data:`NAMESPACE_URI`)::

    Types/ObjectTypes/BaseObjectType
    └─ ns:AigcDeviceType (abstract)            what every AIGC-requesting device has
       ├─ ns:DeviceId, ns:DeviceKind            properties (String)
       ├─ ns:State                              "ready" | "executing" | "stopping"
       ├─ ns:TasksRequested, TasksDone, TasksFailed, RequestsRefused   UInt32 counters
       ├─ ns:LastError, ns:LastErrorCode        last refused call: sentence, mqtt_bridge ErrorCode
       ├─ ns:LastTaskId, ns:LastDecision, ns:LastResult, ns:PendingRequests   (JSON strings)
       ├─ ns:LastExecution, ns:PendingExecutions   the device's own runs (JSON strings)
       ├─ ns:LocalQueueLength                   tasks queued or running on the device (UInt32)
       ├─ ns:RequestTask(TaskKind, ModelName, InputBits, WorkUnits, DeadlineS, Prompt) -> TaskId
       ├─ ns:DeliverDecision(TaskId, Target, EdgeServer, OffloadShare, DownloadModel, ModelName,
       │                     Policy, ExpectedLatencyS, DecidedAt)
       └─ ns:DeliverResult(TaskId, State, Reason, ExecutedOn, LatencyS, OutputBits, OutputUri, FinishedAt)
       ├─ ns:ProductionLineControllerType      a controller: asks for production reports
       └─ ns:DefectCameraType                  a camera: asks for synthetic defect images
    Types/EventTypes/BaseEventType
    ├─ ns:TaskRequestEventType    TaskId, DeviceId, TaskKind, ModelName, InputBits, OutputTokens,
    │                             DenoisingSteps, DeadlineS, CreatedAt, Prompt
    ├─ ns:TaskFinishedEventType   TaskId, DeviceId, State, Reason, ExecutedOn, LatencyS, OutputBits,
    │                             OutputUri, FinishedAt
    └─ ns:TaskExecutedEventType   the device ran its part of a task: TaskId, DeviceId, Part, OffloadShare,
                                  State, Reason, QueueWaitS, ComputeS, LatencyS, OutputBits, OutputUri,
                                  FinishedAt
    Objects
    └─ ns:<device id>  (ProductionLineControllerType or DefectCameraType; EventNotifier on)

Optional values travel as "no value" markers so that every argument keeps one fixed type:
an empty string for an absent string, a negative number for an absent number
(ExpectedLatencyS, LatencyS, OutputBits), and 0 for the work field of the other task kind
(OutputTokens of an image task, DenoisingSteps of a report task).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from asyncua import Node, Server, ua

from pydantic import BaseModel, ConfigDict, Field

from mqtt_bridge.schemas import (
    SAFE_ID_PATTERN,
    Decision,
    TaskKind,
    TaskRequest,
    TaskResult,
)

NAMESPACE_URI = "https://aigc-offload.example/UA/FactoryDevices/"
SAFE_ID_RE = re.compile(SAFE_ID_PATTERN)

DEVICE_BASE_TYPE = "AigcDeviceType"
CONTROLLER_TYPE = "ProductionLineControllerType"
CAMERA_TYPE = "DefectCameraType"
REQUEST_EVENT_TYPE = "TaskRequestEventType"
FINISHED_EVENT_TYPE = "TaskFinishedEventType"
EXECUTED_EVENT_TYPE = "TaskExecutedEventType"

#: ExecutionReport.part values: the whole task (decision target device) or the device's share
#: (1 - offload_share) of a task split with an edge server or the cloud.
PART_WHOLE = "whole"
PART_LOCAL = "local"

#: device kind (CLI and DeviceKind property) -> (ObjectType browse name, the task kind it asks for)
DEVICE_KINDS: dict[str, tuple[str, TaskKind]] = {
    "controller": (CONTROLLER_TYPE, TaskKind.report),
    "camera": (CAMERA_TYPE, TaskKind.defect_image),
}

# Status variables of AigcDeviceType: name -> (initial value, variant type, description).
STATUS_VARIABLES: dict[str, tuple[Any, ua.VariantType, str]] = {
    "State": ("ready", ua.VariantType.String, "ready | executing (a task runs on the device) | stopping"),
    "TasksRequested": (0, ua.VariantType.UInt32, "tasks this device requested since start, count"),
    "TasksDone": (0, ua.VariantType.UInt32, "tasks that ended in state done, count"),
    "TasksFailed": (0, ua.VariantType.UInt32, "tasks that ended rejected, failed or deadline_missed, count"),
    "RequestsRefused": (0, ua.VariantType.UInt32, "malformed method calls refused (RequestTask, Deliver*), count"),
    "LastError": ("", ua.VariantType.String, "why the last refused call was refused, a sentence"),
    "LastErrorCode": ("", ua.VariantType.String, "machine-readable class of LastError (mqtt_bridge ErrorCode or OPC UA status name)"),
    "LastTaskId": ("", ua.VariantType.String, "id of the last task requested"),
    "LastDecision": ("", ua.VariantType.String, "last decision delivered, mqtt_bridge Decision JSON"),
    "LastResult": ("", ua.VariantType.String, "last terminal state reached, mqtt_bridge TaskResult JSON"),
    "PendingRequests": ("[]", ua.VariantType.String, "requests still waiting for a decision or result, JSON array of TaskRequest"),
    "LocalQueueLength": (0, ua.VariantType.UInt32, "tasks queued or running on the device itself, count"),
    "LastExecution": ("", ua.VariantType.String, "last run of the device itself (whole task or its share), ExecutionReport JSON"),
    "PendingExecutions": ("[]", ua.VariantType.String, "runs of the device whose task has no terminal result yet, JSON array of ExecutionReport"),
}


def _arg(name: str, vtype: ua.VariantType, description: str) -> ua.Argument:
    arg = ua.Argument()
    arg.Name = name
    arg.DataType = ua.NodeId(vtype.value)  # the built-in data types' NodeIds equal their variant type ids
    arg.ValueRank = -1  # scalar
    arg.ArrayDimensions = []
    arg.Description = ua.LocalizedText(description)
    return arg


V = ua.VariantType
REQUEST_TASK_INPUTS = [
    _arg("TaskKind", V.String, "report (text model) or defect_image (diffusion model)"),
    _arg("ModelName", V.String, "generative model the task needs, a name of the deployment's catalog"),
    _arg("InputBits", V.Int64, "size of the task's input data to upload, bits (>= 0)"),
    _arg("WorkUnits", V.Int32, "tokens to generate (report, 1..100000) or denoising steps (defect_image, 1..1000)"),
    _arg("DeadlineS", V.Double, "relative deadline from now, seconds (0 < d <= 3600)"),
    _arg("Prompt", V.String, "optional text prompt, at most 4096 characters ('' = none)"),
]
REQUEST_TASK_OUTPUTS = [_arg("TaskId", V.String, "id of the new task, unique per device")]
DELIVER_DECISION_INPUTS = [
    _arg("TaskId", V.String, "the task decided"),
    _arg("Target", V.String, "device, edge or cloud"),
    _arg("EdgeServer", V.String, "edge server id when Target is edge, else ''"),
    _arg("OffloadShare", V.Double, "fraction of the work sent to the target, 0..1"),
    _arg("DownloadModel", V.Boolean, "the target fetches the model from the cloud first"),
    _arg("ModelName", V.String, "the model the task runs with"),
    _arg("Policy", V.String, "policy that decided: name and version"),
    _arg("ExpectedLatencyS", V.Double, "gateway's end-to-end latency estimate, s (negative = none)"),
    _arg("DecidedAt", V.DateTime, "when the gateway decided (UTC)"),
]
DELIVER_RESULT_INPUTS = [
    _arg("TaskId", V.String, "the task"),
    _arg("State", V.String, "done, rejected, failed or deadline_missed"),
    _arg("Reason", V.String, "why, a sentence; required unless State is done"),
    _arg("ExecutedOn", V.String, "device, edge:<id> or cloud ('' = unknown)"),
    _arg("LatencyS", V.Double, "end-to-end latency from the request, s (negative = none)"),
    _arg("OutputBits", V.Int64, "size of the generated output, bits (negative = none)"),
    _arg("OutputUri", V.String, "where the output can be fetched ('' = none)"),
    _arg("FinishedAt", V.DateTime, "when the task reached this state (UTC)"),
]
REQUEST_EVENT_FIELDS = [
    ("TaskId", V.String), ("DeviceId", V.String), ("TaskKind", V.String), ("ModelName", V.String),
    ("InputBits", V.Int64), ("OutputTokens", V.Int32), ("DenoisingSteps", V.Int32), ("DeadlineS", V.Double),
    ("CreatedAt", V.DateTime), ("Prompt", V.String),
]
FINISHED_EVENT_FIELDS = [
    ("TaskId", V.String), ("DeviceId", V.String), ("State", V.String), ("Reason", V.String),
    ("ExecutedOn", V.String), ("LatencyS", V.Double), ("OutputBits", V.Int64), ("OutputUri", V.String),
    ("FinishedAt", V.DateTime),
]
EXECUTED_EVENT_FIELDS = [
    ("TaskId", V.String), ("DeviceId", V.String), ("Part", V.String), ("OffloadShare", V.Double),
    ("State", V.String), ("Reason", V.String), ("QueueWaitS", V.Double), ("ComputeS", V.Double),
    ("LatencyS", V.Double), ("OutputBits", V.Int64), ("OutputUri", V.String), ("FinishedAt", V.DateTime),
]


class ExecutionReport(BaseModel):
    """The device ran its part of a task (not the task's terminal state: that comes from the gateway
    through DeliverResult). ``result`` holds the run's outcome (``executed_on`` "device")."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ExecutionReport")

    part: str = Field(pattern="^(whole|local)$",
                      description="whole: the task ran on the device (target device); local: the device's "
                                  "share 1 - offload_share of a task split with an edge server or the cloud")
    offload_share: float = Field(ge=0.0, le=1.0, description="the decision's offload share (the device ran 1 - it; "
                                                             "1 for part whole)")
    queue_wait_s: float = Field(ge=0.0, description="from the decision's arrival to the start of the run, s")
    compute_s: float = Field(ge=0.0, description="the executor's run time, s")
    result: TaskResult


@dataclass
class TypeNodes:
    """The type nodes of one server's information model."""

    ns: int
    device_base: Node
    controller: Node
    camera: Node
    request_event: Node
    finished_event: Node
    executed_event: Node

    def object_type(self, kind: str) -> Node:
        return self.controller if kind == "controller" else self.camera


async def build_types(server: Server, ns: int, callbacks: dict[str, Any]) -> TypeNodes:
    """Add the ObjectTypes and EventTypes to ``server``'s address space.

    ``callbacks`` maps "RequestTask", "DeliverDecision", "DeliverResult" to the method handlers;
    they are linked to the type's method declarations and, by the caller, to each instance."""
    base = await server.nodes.base_object_type.add_object_type(ns, DEVICE_BASE_TYPE)
    await base.write_attribute(ua.AttributeIds.IsAbstract, ua.DataValue(ua.Variant(True, V.Boolean)))
    await base.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(
        ua.LocalizedText("A factory device that asks the edge gateway for AI-generated content"), V.LocalizedText)))
    for name in ("DeviceId", "DeviceKind"):
        prop = await base.add_property(ns, name, "", V.String)
        await prop.set_modelling_rule(True)
    for name, (value, vtype, description) in STATUS_VARIABLES.items():
        var = await base.add_variable(ns, name, ua.Variant(value, vtype))
        await var.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(
            ua.LocalizedText(description), V.LocalizedText)))
        await var.set_modelling_rule(True)
    for name, inputs, outputs in (("RequestTask", REQUEST_TASK_INPUTS, REQUEST_TASK_OUTPUTS),
                                  ("DeliverDecision", DELIVER_DECISION_INPUTS, []),
                                  ("DeliverResult", DELIVER_RESULT_INPUTS, [])):
        method = await base.add_method(ns, name, callbacks[name], inputs, outputs)
        await method.set_modelling_rule(True)
    controller = await base.add_object_type(ns, CONTROLLER_TYPE)
    camera = await base.add_object_type(ns, CAMERA_TYPE)
    for node, text in ((controller, "Production-line controller (PLC-like): asks for production reports"),
                       (camera, "Defect-detection camera: asks for synthetic defect images")):
        await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(
            ua.LocalizedText(text), V.LocalizedText)))
    request_event = await server.create_custom_event_type(ns, REQUEST_EVENT_TYPE, ua.ObjectIds.BaseEventType,
                                                          REQUEST_EVENT_FIELDS)
    finished_event = await server.create_custom_event_type(ns, FINISHED_EVENT_TYPE, ua.ObjectIds.BaseEventType,
                                                           FINISHED_EVENT_FIELDS)
    executed_event = await server.create_custom_event_type(ns, EXECUTED_EVENT_TYPE, ua.ObjectIds.BaseEventType,
                                                           EXECUTED_EVENT_FIELDS)
    return TypeNodes(ns, base, controller, camera, request_event, finished_event, executed_event)


# --------------------------------------------------------------------------------------------
# Conversions between method arguments / event fields and the mqtt_bridge payload models
# --------------------------------------------------------------------------------------------
def _opt_str(value: str) -> str | None:
    return value if value else None


def _opt_num(value: float | int) -> float | int | None:
    return None if value is None or value < 0 or value != value else value  # negative or NaN: absent


def utc(dt: datetime) -> datetime:
    """asyncua decodes DateTime as naive UTC; the payload models want aware datetimes."""
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def decision_from_args(device_id: str, args: list[Any]) -> Decision:
    """DeliverDecision arguments -> Decision (raises pydantic ValidationError)."""
    task_id, target, edge, share, download, model, policy, expected, decided_at = args
    return Decision(task_id=task_id, device_id=device_id, target=target, edge_server=_opt_str(edge),
                    offload_share=share, download_model=download, model_name=model, policy=policy,
                    expected_latency_s=_opt_num(expected), decided_at=utc(decided_at))


def decision_to_args(d: Decision) -> list[ua.Variant]:
    return [ua.Variant(d.task_id, V.String), ua.Variant(d.target.value, V.String),
            ua.Variant(d.edge_server or "", V.String), ua.Variant(float(d.offload_share), V.Double),
            ua.Variant(bool(d.download_model), V.Boolean), ua.Variant(d.model_name, V.String),
            ua.Variant(d.policy, V.String),
            ua.Variant(-1.0 if d.expected_latency_s is None else float(d.expected_latency_s), V.Double),
            ua.Variant(d.decided_at, V.DateTime)]


def result_from_args(device_id: str, args: list[Any]) -> TaskResult:
    """DeliverResult arguments -> TaskResult (raises pydantic ValidationError)."""
    task_id, state, reason, executed_on, latency, output_bits, output_uri, finished_at = args
    return TaskResult(task_id=task_id, device_id=device_id, state=state, reason=_opt_str(reason),
                      executed_on=_opt_str(executed_on), latency_s=_opt_num(latency),
                      output_bits=_opt_num(output_bits), output_uri=_opt_str(output_uri),
                      finished_at=utc(finished_at))


def result_to_args(r: TaskResult) -> list[ua.Variant]:
    return [ua.Variant(r.task_id, V.String), ua.Variant(r.state.value, V.String),
            ua.Variant(r.reason or "", V.String), ua.Variant(r.executed_on or "", V.String),
            ua.Variant(-1.0 if r.latency_s is None else float(r.latency_s), V.Double),
            ua.Variant(-1 if r.output_bits is None else int(r.output_bits), V.Int64),
            ua.Variant(r.output_uri or "", V.String), ua.Variant(r.finished_at, V.DateTime)]


def request_event_fields(req: TaskRequest) -> dict[str, ua.Variant]:
    return {"TaskId": ua.Variant(req.task_id, V.String), "DeviceId": ua.Variant(req.device_id, V.String),
            "TaskKind": ua.Variant(req.task_kind.value, V.String), "ModelName": ua.Variant(req.model_name, V.String),
            "InputBits": ua.Variant(req.input_bits, V.Int64),
            "OutputTokens": ua.Variant(req.output_tokens or 0, V.Int32),
            "DenoisingSteps": ua.Variant(req.denoising_steps or 0, V.Int32),
            "DeadlineS": ua.Variant(float(req.deadline_s), V.Double),
            "CreatedAt": ua.Variant(req.created_at, V.DateTime), "Prompt": ua.Variant(req.prompt or "", V.String)}


def request_from_event(fields: dict[str, Any]) -> TaskRequest:
    """Fields of a TaskRequestEventType notification -> TaskRequest (raises ValidationError)."""
    kind = fields["TaskKind"]
    return TaskRequest(task_id=fields["TaskId"], device_id=fields["DeviceId"], task_kind=kind,
                       model_name=fields["ModelName"], input_bits=fields["InputBits"],
                       output_tokens=(fields["OutputTokens"] or None) if kind == "report" else None,
                       denoising_steps=(fields["DenoisingSteps"] or None) if kind == "defect_image" else None,
                       deadline_s=fields["DeadlineS"], created_at=utc(fields["CreatedAt"]),
                       prompt=fields["Prompt"] or None)


def finished_event_fields(r: TaskResult) -> dict[str, ua.Variant]:
    return {"TaskId": ua.Variant(r.task_id, V.String), "DeviceId": ua.Variant(r.device_id, V.String),
            "State": ua.Variant(r.state.value, V.String), "Reason": ua.Variant(r.reason or "", V.String),
            "ExecutedOn": ua.Variant(r.executed_on or "", V.String),
            "LatencyS": ua.Variant(-1.0 if r.latency_s is None else float(r.latency_s), V.Double),
            "OutputBits": ua.Variant(-1 if r.output_bits is None else int(r.output_bits), V.Int64),
            "OutputUri": ua.Variant(r.output_uri or "", V.String),
            "FinishedAt": ua.Variant(r.finished_at, V.DateTime)}


def result_from_event(fields: dict[str, Any]) -> TaskResult:
    return TaskResult(task_id=fields["TaskId"], device_id=fields["DeviceId"], state=fields["State"],
                      reason=_opt_str(fields["Reason"]), executed_on=_opt_str(fields["ExecutedOn"]),
                      latency_s=_opt_num(fields["LatencyS"]), output_bits=_opt_num(fields["OutputBits"]),
                      output_uri=_opt_str(fields["OutputUri"]), finished_at=utc(fields["FinishedAt"]))


def executed_event_fields(x: ExecutionReport) -> dict[str, ua.Variant]:
    r = x.result
    return {"TaskId": ua.Variant(r.task_id, V.String), "DeviceId": ua.Variant(r.device_id, V.String),
            "Part": ua.Variant(x.part, V.String), "OffloadShare": ua.Variant(float(x.offload_share), V.Double),
            "State": ua.Variant(r.state.value, V.String), "Reason": ua.Variant(r.reason or "", V.String),
            "QueueWaitS": ua.Variant(float(x.queue_wait_s), V.Double),
            "ComputeS": ua.Variant(float(x.compute_s), V.Double),
            "LatencyS": ua.Variant(-1.0 if r.latency_s is None else float(r.latency_s), V.Double),
            "OutputBits": ua.Variant(-1 if r.output_bits is None else int(r.output_bits), V.Int64),
            "OutputUri": ua.Variant(r.output_uri or "", V.String),
            "FinishedAt": ua.Variant(r.finished_at, V.DateTime)}


def execution_from_event(fields: dict[str, Any]) -> ExecutionReport:
    """Fields of a TaskExecutedEventType notification -> ExecutionReport (raises ValidationError)."""
    result = TaskResult(task_id=fields["TaskId"], device_id=fields["DeviceId"], state=fields["State"],
                        reason=_opt_str(fields["Reason"]), executed_on="device",
                        latency_s=_opt_num(fields["LatencyS"]), output_bits=_opt_num(fields["OutputBits"]),
                        output_uri=_opt_str(fields["OutputUri"]), finished_at=utc(fields["FinishedAt"]))
    return ExecutionReport(part=fields["Part"], offload_share=fields["OffloadShare"],
                           queue_wait_s=max(fields["QueueWaitS"], 0.0), compute_s=max(fields["ComputeS"], 0.0),
                           result=result)
