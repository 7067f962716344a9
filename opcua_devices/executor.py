"""Running a task on the device itself, when the gateway's decision says ``target: device``.

An executor is any callable ``executor(request, decision) -> ExecutionOutput`` (or an awaitable of
one). It runs the device's part of the task: all of it when ``decision.target`` is ``device``, the
share ``1 - decision.offload_share`` when the gateway split the task with an edge server or the
cloud (:func:`local_share` gives that fraction). A plain function runs in a worker thread (an ONNX session blocks), a coroutine function on
the server's event loop. Raising an exception makes the task ``failed`` with the exception's text
as the reason. The device runs its tasks one at a time, in decision order (a FIFO like the
simulator's device queue).

:class:`CostModelExecutor` is the model-free fallback: it does no generation, it computes the
time the device would need from the one cost model, ``T = W / f_m`` with
``policies.cost.compute_delay_s`` (W from ``token_workload_cycles`` / ``denoising_workload_cycles``
and the preset's Gcycles per unit of the model), and sleeps that long. The real generative models
(package ``genmodels``) plug in as another executor.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable, Union

from mqtt_bridge.schemas import Decision, TaskKind, TaskRequest
from policies.cost import BITS_PER_MBIT, compute_delay_s, denoising_workload_cycles, token_workload_cycles


def local_share(decision: Decision) -> float:
    """Fraction of the task's work the device runs: 1 for target device, else 1 - offload_share."""
    if decision.target.value == "device":
        return 1.0
    return min(max(1.0 - float(decision.offload_share), 0.0), 1.0)


@dataclass(frozen=True)
class ExecutionOutput:
    """What a local execution produced."""

    output_bits: int | None = None  # size of the generated output, bits
    output_uri: str | None = None  # where it can be fetched (file://, http://, ...)


Executor = Callable[[TaskRequest, Decision], Union[ExecutionOutput, Awaitable[ExecutionOutput]]]


async def run_executor(executor: Executor, request: TaskRequest, decision: Decision) -> ExecutionOutput:
    """Run ``executor`` without blocking the event loop (plain functions go to a thread)."""
    if asyncio.iscoroutinefunction(executor) or asyncio.iscoroutinefunction(getattr(executor, "__call__", None)):
        out = await executor(request, decision)
    else:
        out = await asyncio.to_thread(executor, request, decision)
        if asyncio.iscoroutine(out):
            out = await out
    if out is None:
        return ExecutionOutput()
    if not isinstance(out, ExecutionOutput):
        raise TypeError(f"executor returned {type(out).__name__}, not ExecutionOutput")
    return out


class CostModelExecutor:
    """Model-free fallback executor: sleeps the cost model's local compute time ``W / f_m``.

    ``device_cpu_ghz`` is the device's CPU f_m (GHz); ``time_scale`` multiplies the sleep (the
    device server's own time scale, so a sped-up lab run stays consistent); ``output_bits`` maps a
    task kind to the output size reported (default: the middle of the preset's output range)."""

    def __init__(self, device_cpu_ghz: float, *, preset: str = "factory", overrides: dict | None = None,
                 time_scale: float = 1.0, output_bits: dict[TaskKind, int] | None = None):
        from .tasks import make_factory_simulator

        if device_cpu_ghz <= 0:
            raise ValueError("device_cpu_ghz must be positive")
        p = make_factory_simulator(preset, overrides).preset
        self.cpu_hz = device_cpu_ghz * 1e9
        self.time_scale = time_scale
        self.gcycles_per_unit = {m.name: m.gcycles_per_unit for m in p.models}
        mid = lambda lo_hi: int(round((lo_hi[0] + lo_hi[1]) / 2 * BITS_PER_MBIT))  # noqa: E731
        self.output_bits = output_bits or {TaskKind.report: mid(p.report_output_mbit),
                                           TaskKind.defect_image: mid(p.image_output_mbit)}

    def compute_time_s(self, request: TaskRequest) -> float:
        """Local compute time of the whole task, s (MATO eq. 3 without the slot ceiling)."""
        if request.model_name not in self.gcycles_per_unit:
            raise ValueError(f"the cost model has no entry for model '{request.model_name}'")
        g = self.gcycles_per_unit[request.model_name] * 1e9
        if request.task_kind == TaskKind.report:
            work = token_workload_cycles(request.output_tokens, g)
        else:
            work = denoising_workload_cycles(request.denoising_steps, g)
        return float(compute_delay_s(work, self.cpu_hz))

    async def __call__(self, request: TaskRequest, decision: Decision) -> ExecutionOutput:
        await asyncio.sleep(self.compute_time_s(request) * local_share(decision) * self.time_scale)
        return ExecutionOutput(output_bits=self.output_bits[request.task_kind])
