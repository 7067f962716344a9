"""Device-side local execution for :class:`~mqtt_bridge.client.DeviceClient`.

When the gateway's decision gives the device work (target ``device``: all of it, part ``whole``;
a split ``0 < offload_share < 1`` to an edge server or the cloud: its ``1 - offload_share``, part
``local``), the device runs that work and reports it on its ``execution`` topic as an
:class:`~mqtt_bridge.schemas.ExecutionReport`. The task's one terminal state still comes from the
gateway on the result topic.

Executors follow the contract of :mod:`opcua_devices.executor`: ``executor(request, decision) ->
ExecutionOutput`` (or a coroutine). The decision an executor gets here always has target
``device`` and ``offload_share`` = the fraction of the task's work the device runs (1.0 for a
whole task, ``1 - share`` for the local part of a split one).

:class:`ShareCostModelExecutor` is :class:`opcua_devices.executor.CostModelExecutor` (sleep the
one cost model's ``W / f_m``) scaled to that fraction, plus the device's compute energy
``kappa f^2 W`` (``policies.cost.compute_energy_j``). The device runs its parts one at a time, in
decision order (a FIFO, like the simulator's device queue).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from opcua_devices.executor import CostModelExecutor, ExecutionOutput, run_executor
from policies.cost import compute_energy_j

from .schemas import Decision, ExecutionPart, Target, TaskRequest

log = logging.getLogger("mqtt_bridge.local_exec")


def local_part(decision: Decision) -> tuple[ExecutionPart, float] | None:
    """(part, fraction of the work the device runs) for a decision, or None if the device runs nothing."""
    if decision.target == Target.device:
        return ExecutionPart.whole, 1.0
    if 0.0 < decision.offload_share < 1.0:
        return ExecutionPart.local, 1.0 - float(decision.offload_share)
    return None


def local_decision(decision: Decision, fraction: float) -> Decision:
    """The decision as the device's executor sees it: target device, offload_share = its fraction."""
    return decision.model_copy(update={"target": Target.device, "edge_server": None, "offload_share": fraction})


class ShareCostModelExecutor(CostModelExecutor):
    """:class:`~opcua_devices.executor.CostModelExecutor` for the device's fraction of the work
    (``decision.offload_share``, see the module doc), with its compute energy."""

    def __init__(self, device_cpu_ghz: float, *, preset: str = "factory", overrides: dict | None = None,
                 time_scale: float = 1.0, output_bits: dict | None = None):
        from opcua_devices.tasks import make_factory_simulator

        super().__init__(device_cpu_ghz, preset=preset, overrides=overrides, time_scale=time_scale,
                         output_bits=output_bits)
        self.kappa = float(make_factory_simulator(preset, overrides).preset.kappa_device)

    async def __call__(self, request: TaskRequest, decision: Decision) -> ExecutionOutput:
        # the cost model's whole-task W / f_m (CostModelExecutor.compute_time_s), scaled to the fraction
        await asyncio.sleep(self.compute_time_s(request) * float(decision.offload_share) * self.time_scale)
        return ExecutionOutput(output_bits=self.output_bits[request.task_kind])

    def energy_j(self, request: TaskRequest, fraction: float) -> float:
        """kappa f^2 W of the device's fraction of the work, J (MATO eq. 4)."""
        cycles = fraction * self.compute_time_s(request) * self.cpu_hz  # T = W / f
        return float(compute_energy_j(cycles, self.cpu_hz, self.kappa))


def default_executor(device_cpu_ghz: float | None = None, *, preset: str = "factory", overrides: dict | None = None,
                     time_scale: float = 1.0, kind: str = "camera") -> ShareCostModelExecutor:
    """The default device executor; ``device_cpu_ghz`` None: the middle of the preset's CPU range of
    the device kind (``camera`` or ``controller``)."""
    if device_cpu_ghz is None:
        from opcua_devices.tasks import make_factory_simulator

        p = make_factory_simulator(preset, overrides).preset
        lo, hi = p.controller_cpu_ghz if kind == "controller" else p.camera_cpu_ghz
        device_cpu_ghz = (lo + hi) / 2
    return ShareCostModelExecutor(device_cpu_ghz, preset=preset, overrides=overrides, time_scale=time_scale)


NOT_RUN_REASON = "the device stopped before it ran its part"


class _StoppedMidway(Exception):
    """The runner's stop deadline passed while a part ran."""


class LocalRunner:
    """One worker thread with its own asyncio loop that runs the device's parts in FIFO order and
    calls ``report(context, request, part, ok, reason, compute_s, energy_j, output_bits)`` after each
    run (``ok`` None: skipped because ``skip()`` said the task already ended)."""

    def __init__(self, executor, report: Callable[..., None], name: str = "local-exec"):
        self.executor = executor
        self.report = report
        self._q: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._deadline: float | None = None  # set by stop(): parts not finished by then are reported failed
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: TaskRequest, decision: Decision, skip: Callable[[], bool] | None = None,
               context: Any = None) -> bool:
        """Queue the device's share of a decided task; False if the decision gives the device nothing.
        After :meth:`stop` the part is reported failed at once (the gateway still gets its terminal state)."""
        lp = local_part(decision)
        if lp is None:
            return False
        with self._lock:  # never queued behind the stop marker, where nothing would report it
            stopped = self._deadline is not None
            if not stopped:
                self._q.put((request, decision, lp[0], lp[1], skip, context))
        if stopped:
            self._safe_report(context, request, lp[0], False, NOT_RUN_REASON, 0.0, 0.0, None)
        return True

    def pending(self) -> int:
        return self._q.qsize()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Run the queued parts for up to ``timeout_s``; the ones not finished by then are reported
        failed, so every part gets its report while the caller can still send it."""
        with self._lock:
            if self._deadline is None:
                self._deadline = time.monotonic() + timeout_s
                self._q.put(None)
        self._thread.join(timeout_s + 2.0)
        if self._thread.is_alive():
            log.warning("%s: a local part is still running %.1f s after stop", self._thread.name, timeout_s)

    async def _bounded(self, request: TaskRequest, decision: Decision):
        task = asyncio.ensure_future(run_executor(self.executor, request, decision))
        while True:  # polls: stop() may set the deadline while the part runs
            left = None if self._deadline is None else self._deadline - time.monotonic()
            if left is not None and left <= 0:
                task.cancel()
                raise _StoppedMidway(NOT_RUN_REASON + " to its end")
            done, _ = await asyncio.wait({task}, timeout=0.1 if left is None else min(0.1, left))
            if done:
                return task.result()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while True:
                item = self._q.get()
                if item is None:
                    return
                request, decision, part, fraction, skip, context = item
                if skip is not None and skip():  # the task already ended (e.g. the remote part failed)
                    self._safe_report(context, request, part, None, None, 0.0, 0.0, None)
                    continue
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self._safe_report(context, request, part, False, NOT_RUN_REASON, 0.0, 0.0, None)
                    continue
                t0 = time.perf_counter()
                ok, reason, bits = True, None, None
                try:
                    out = loop.run_until_complete(self._bounded(request, local_decision(decision, fraction)))
                    bits = out.output_bits
                except _StoppedMidway as exc:
                    ok, reason = False, str(exc)
                except Exception as exc:  # noqa: BLE001 - the executor's failure is the task's
                    ok, reason = False, f"local execution failed: {exc}"[:1024]
                compute_s = time.perf_counter() - t0
                energy = 0.0
                fn = getattr(self.executor, "energy_j", None)
                if fn is not None:
                    try:
                        energy = float(fn(request, fraction))
                    except Exception:  # noqa: BLE001
                        energy = 0.0
                self._safe_report(context, request, part, ok, reason, compute_s, energy, bits)
        finally:
            loop.close()

    def _safe_report(self, context, request, *args) -> None:
        try:
            self.report(context, request, *args)
        except Exception:  # noqa: BLE001
            log.exception("reporting the local run of %s failed", request.task_id)
