"""Conversions between the ROS interfaces and the ROS-free cores, and the plant's work model."""

from __future__ import annotations

import time
from dataclasses import dataclass

from builtin_interfaces.msg import Time
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription_content_filter_options import ContentFilterOptions

from aigc_offload_interfaces.msg import Decision, TaskRequest, TaskResult

from .deployment import TASK_QUEUE_DEPTH
from .edge_core import KIND_IMAGE, KIND_REPORT, EdgeTask

STATE_NAMES = {TaskResult.DONE: "done", TaskResult.REJECTED: "rejected", TaskResult.FAILED: "failed",
               TaskResult.DEADLINE_MISSED: "deadline_missed"}


# SubmitTask's request and reply queues. rclpy's default service QoS keeps the last 10: a server or a
# caller that stalls for 25 ms at 400 tasks/s (a busy 2-core machine) silently lost the oldest
# requests or acknowledgements (seen as "did not acknowledge within 1 s" at the gateway).
TASK_SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=TASK_QUEUE_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)


def origin_filter(prefix: str) -> ContentFilterOptions:
    """A DDS content filter for an ingress's share of ``/aigc/decision`` and ``/aigc/task_result``:
    messages whose ``origin`` starts with ``prefix`` ("mqtt:", "opcua:"), and messages without an
    origin (a publisher that does not set it; the ingress's own task memory sorts those out).

    Why: every ingress used to receive, deserialize and drop every other ingress's decisions and
    results in Python, ~0.3 ms of CPU per foreign task. Fast DDS evaluates the filter below the
    Python layer; on an RMW without content filtering the subscription silently gets everything and
    the ingress's own origin check still applies."""
    return ContentFilterOptions(filter_expression="origin LIKE %0 OR origin = %1",
                                expression_parameters=[f"'{prefix}%'", "''"])


def to_time(t_s: float) -> Time:
    sec = int(t_s)
    return Time(sec=sec, nanosec=int(round((t_s - sec) * 1e9)) % 1_000_000_000)


def from_time(t: Time) -> float:
    return t.sec + t.nanosec * 1e-9


@dataclass(frozen=True)
class ModelWork:
    """Work model of the catalog (from the preset): Gcycles per token or per denoising step."""

    kind: int  # KIND_REPORT | KIND_IMAGE
    gcycles_per_unit: float
    size_bytes: int  # nominal size the cache budget counts (preset size_mb * 1e6)


def model_work_table(preset) -> dict[str, ModelWork]:
    """LAD-TS eq. 3 / token work per model of a factory preset."""
    from policies.cost import BITS_PER_MB

    return {m.name: ModelWork(KIND_REPORT if m.kind == "report" else KIND_IMAGE, m.gcycles_per_unit,
                              int(round(m.size_mb * BITS_PER_MB / 8)))
            for m in preset.models}


def task_units(req: TaskRequest) -> int:
    return int(req.output_tokens if req.task_kind == TaskRequest.TASK_REPORT else req.denoising_steps)


def work_cycles(req: TaskRequest, table: dict[str, ModelWork]) -> float:
    """W = units x Gcycles per unit (token workload / LAD-TS eq. 3), cycles."""
    from policies.cost import denoising_workload_cycles, token_workload_cycles

    m = table[req.model_name]
    f = token_workload_cycles if m.kind == KIND_REPORT else denoising_workload_cycles
    return float(f(task_units(req), m.gcycles_per_unit)) * 1e9


def edge_task(req: TaskRequest, dec: Decision, table: dict[str, ModelWork], hops: int = 0) -> EdgeTask:
    share = float(dec.offload_share) if dec.offload_share > 0 else 1.0
    created = from_time(req.created_at)
    return EdgeTask(
        task_id=req.task_id, device_id=req.device_id, origin=req.origin, model_name=req.model_name,
        task_kind=KIND_IMAGE if req.task_kind == TaskRequest.TASK_DEFECT_IMAGE else KIND_REPORT,
        units=task_units(req), share=share,
        work_cycles=share * work_cycles(req, table) if req.model_name in table else -1.0,
        input_bits=int(req.input_bits), created_at_s=created, deadline_at_s=created + float(req.deadline_s),
        download=bool(dec.download_model), prompt=req.prompt, hops=hops,
        part=TaskResult.PART_WHOLE if share >= 1.0 else TaskResult.PART_REMOTE)


def result_msg(task_id: str, device_id: str, origin: str, state: int, reason: str = "", *, part: int = 0,
               created_at_s: float | None = None, executed_on: str = "", cache_hit: bool = False,
               downloaded: bool = False, hops: int = 0, queue_wait_s: float = 0.0, compute_s: float = 0.0,
               energy_j: float = 0.0, output: bytes = b"", output_mime: str = "", now_s: float | None = None
               ) -> TaskResult:
    now_s = time.time() if now_s is None else now_s
    msg = TaskResult(task_id=task_id, device_id=device_id, origin=origin, part=part, state=state, reason=reason,
                     latency_s=max(now_s - created_at_s, 0.0) if created_at_s is not None else 0.0,
                     energy_j=energy_j, executed_on=executed_on, cache_hit=cache_hit, model_downloaded=downloaded,
                     forwarded_hops=hops, queue_wait_s=queue_wait_s, compute_s=compute_s,
                     output_mime=output_mime, finished_at=to_time(now_s))
    if output:
        msg.output = output
    return msg


def task_result_for(task: EdgeTask, state: int, reason: str, executed_on: str, **kw) -> TaskResult:
    return result_msg(task.task_id, task.device_id, task.origin, state, reason, part=task.part,
                      created_at_s=task.created_at_s, executed_on=executed_on, cache_hit=task.cache_hit,
                      downloaded=task.downloaded, hops=task.hops, **kw)
