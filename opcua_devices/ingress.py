"""The gateway's OPC UA ingress: one asyncua client per device server, free of ROS.

:class:`OpcuaIngress` connects to many device servers (Basic256Sha256 SignAndEncrypt, client
certificate, user name and password, server certificates checked against a trust directory),
subscribes to each device's ``TaskRequestEventType``, ``TaskExecutedEventType`` and
``TaskFinishedEventType`` events, turns every request into an :class:`mqtt_bridge.schemas.TaskRequest`
and every run of the device itself into an :class:`opcua_devices.model.ExecutionReport` (part
whole/local, compute time) and hands them to the caller, and delivers decisions and results back
by calling the device's ``DeliverDecision`` / ``DeliverResult`` methods.

Threading: the asyncio loop runs in the ingress's own thread, so it sits beside an rclpy executor.
``start``, ``stop``, ``submit_decision``, ``submit_result``, ``get_request`` and ``status`` may be
called from any thread; the submit methods return a ``concurrent.futures.Future`` at once (they
never wait for the network). Callbacks (``on_request``, ``on_device_result``) run in one dispatcher
thread of the ingress, never on the asyncio loop, so a slow callback delays later callbacks but
not the protocol.

Connection loss (a device restart, a network cut): the endpoint's client is dropped and a NEW
``asyncua.Client`` is made for every attempt (reusing one after a loss can hang, asyncua issue
#1660), with exponential backoff (``backoff_min_s`` doubling up to ``backoff_max_s``, +-20 %
jitter); after reconnecting it subscribes again and reads the device's ``PendingRequests``, so
requests and execution reports raised while the ingress was away are handed over too (from
``PendingRequests`` / ``PendingExecutions``; each task id, and each task's run, once). Deliveries
to a device that is away wait for the reconnect (up to ``delivery_timeout_s``) and are retried;
the device methods are idempotent for re-deliveries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from pydantic import ValidationError

from mqtt_bridge.schemas import Decision, TaskRequest, TaskResult

from . import model as m
from .security import ClientSecurity, apply_client_security

log = logging.getLogger("opcua_devices.ingress")

SEEN_KEEP = 20_000  # task ids remembered for de-duplication (events vs PendingRequests after a reconnect)


class DeliveryError(RuntimeError):
    """A decision or result could not be delivered: the device is unknown or stayed unreachable."""


class DeliveryRefused(DeliveryError):
    """The device answered the delivery with a Bad status code (a malformed or conflicting call)."""

    def __init__(self, status: ua.StatusCode, sentence: str):
        name = status.name if hasattr(status, "name") else str(status)
        super().__init__(f"{name}: {sentence}" if sentence else name)
        self.status = status
        self.sentence = sentence


@dataclass
class DeviceEndpoint:
    """One device server: its endpoint URL and, optionally, its own client security."""

    url: str
    security: ClientSecurity | None = None  # None: the ingress's default security


@dataclass
class IngressSettings:
    backoff_min_s: float = 0.5  # first reconnect delay
    backoff_max_s: float = 16.0  # reconnect delay cap
    request_timeout_s: float = 4.0  # one OPC UA request (connect steps, method calls)
    # how often asyncua probes an idle connection, and how long the probe may take (asyncua uses one value for
    # both): 1 s declared a busy server dead and dropped its session mid-burst; a restarted server closes
    # the socket, which is seen at once whatever this is
    watchdog_s: float = 5.0
    publish_interval_ms: float = 0.0  # subscription publishing interval; 0: the device publishes each event at once
    delivery_timeout_s: float = 30.0  # a decision/result waits at most this long for its device
    queue_size: int = 10_000  # requests held for get_request()/on_request
    session_timeout_ms: int = 60_000  # server keeps a lost session this long


@dataclass
class EndpointStatus:
    url: str
    connected: bool = False
    device_ids: list[str] = field(default_factory=list)
    connects: int = 0  # successful connections so far (1 = never reconnected)
    last_error: str = ""


@dataclass
class _Device:
    device_id: str
    object_id: ua.NodeId
    methods: dict[str, ua.NodeId]


@dataclass(frozen=True)
class DeviceInfo:
    """What the ingress learnt about a device when it connected."""

    device_id: str
    kind: str  # "controller" | "camera" (the device's DeviceKind property)
    url: str  # endpoint of the server that hosts it


# Method calls per Call request (the device servers' MaxNodesPerMethodCall is larger).
CALLS_PER_REQUEST = 64


class _Conn:
    """Live state of one endpoint (touched on the ingress loop only)."""

    def __init__(self, ep: DeviceEndpoint):
        self.ep = ep
        self.client: Client | None = None
        self.devices: dict[str, _Device] = {}
        self.connected = asyncio.Event()
        self.status = EndpointStatus(ep.url)
        self.request_type: ua.NodeId | None = None
        self.finished_type: ua.NodeId | None = None
        self.executed_type: ua.NodeId | None = None
        # method calls waiting for the next batch: (client, request, future)
        self.batch: list[tuple[Client, ua.CallMethodRequest, asyncio.Future]] = []

    async def call(self, client: Client, req: ua.CallMethodRequest) -> ua.CallMethodResult:
        """One method call, sent in one OPC UA Call request with every other call queued on this
        connection in the same turn of the loop.

        Why: each Call request costs a signed and encrypted message each way plus asyncua's request
        machinery, whatever it carries; under load decisions and results for one server arrive
        together, and one request with N calls costs far less than N requests. A lone call is sent
        on the next turn of the loop, so at low rates nothing waits."""
        fut = asyncio.get_running_loop().create_future()
        self.batch.append((client, req, fut))
        if len(self.batch) == 1:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        return await fut

    async def _flush(self) -> None:
        batch, self.batch = self.batch, []
        groups: dict[int, tuple[Client, list]] = {}
        for client, req, fut in batch:  # a reconnect between two calls changes the client
            groups.setdefault(id(client), (client, []))[1].append((req, fut))
        for client, items in groups.values():
            for i in range(0, len(items), CALLS_PER_REQUEST):
                chunk = items[i:i + CALLS_PER_REQUEST]
                try:
                    results = await client.uaclient.call([req for req, _ in chunk])
                except BaseException as exc:  # noqa: BLE001 - every caller gets the failure (and retries)
                    for _, fut in chunk:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, fut), res in zip(chunk, results):
                    if not fut.done():
                        fut.set_result(res)


async def own_fields_filter(event_type, ns: int) -> ua.EventFilter:
    """The event filter of one monitored item per event type: EventType and the type's own fields.

    Why not one item for the three types (asyncua's default for a list): its select clause is the
    union of every field of the three types and of BaseEventType (~30), and every notification
    carries all of them, most empty; decoding those Variants was a fifth of the ingress's CPU at a
    few hundred requests per second. One item per type selects ~11 fields, the where clause keeps
    each item to its type."""
    from asyncua.common.events import get_filter_from_event_type

    evfilter = await get_filter_from_event_type([event_type])
    evfilter.SelectClauses = [c for c in evfilter.SelectClauses if len(c.BrowsePath) == 1 and (
        c.BrowsePath[0].NamespaceIndex == ns or c.BrowsePath[0].Name == "EventType")]
    return evfilter


class _EventHandler:
    """asyncua subscription handler of one connection; runs on the ingress loop."""

    def __init__(self, ingress: "OpcuaIngress", conn: _Conn):
        self.ingress = ingress
        self.conn = conn

    def event_notification(self, event: Any) -> None:
        try:
            fields = {k: v.Value for k, v in event.get_event_props_as_fields_dict().items()}
            etype = fields.get("EventType")
            if etype == self.conn.request_type:
                self.ingress._hand_over(m.request_from_event(fields))
            elif etype == self.conn.executed_type:
                self.ingress._device_execution(m.execution_from_event(fields))
            elif etype == self.conn.finished_type:
                self.ingress._device_finished(m.result_from_event(fields))
        except ValidationError as exc:
            log.warning("%s: event that is not a valid payload dropped: %s", self.conn.ep.url, exc.errors()[0])
        except Exception:  # noqa: BLE001  one odd event must not kill the subscription
            log.exception("%s: event handling failed", self.conn.ep.url)

    def status_change_notification(self, status: Any) -> None:
        log.info("%s: subscription status %s", self.conn.ep.url, status)


class OpcuaIngress:
    """Client manager for many device servers; see the module docstring.

    ``on_request(TaskRequest)`` is called for every new request (in the ingress's dispatcher
    thread); without it, requests wait in a queue for :meth:`get_request`. ``on_device_result``
    receives the devices' reports of their own runs (:class:`~opcua_devices.model.ExecutionReport`:
    part whole or local, compute time, outcome; each once); ``on_device_finished`` the terminal
    states the devices record (echoes of delivered results, their own deadline sweeps)."""

    def __init__(self, endpoints: Sequence[str | DeviceEndpoint], security: ClientSecurity | None = None, *,
                 on_request: Callable[[TaskRequest], None] | None = None,
                 on_device_result: Callable[[m.ExecutionReport], None] | None = None,
                 on_device_finished: Callable[[TaskResult], None] | None = None,
                 settings: IngressSettings | None = None):
        self.settings = settings or IngressSettings()
        self._endpoints = [e if isinstance(e, DeviceEndpoint) else DeviceEndpoint(e) for e in endpoints]
        for e in self._endpoints:
            if (e.security or security) is None:
                raise ValueError(f"endpoint {e.url} has no client security (give security=ClientSecurity(...))")
        self._security = security
        self.on_request = on_request
        self.on_device_result = on_device_result
        self.on_device_finished = on_device_finished
        self._seen_runs: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._device_info: dict[str, DeviceInfo] = {}
        self._requests: queue.Queue[TaskRequest] = queue.Queue(self.settings.queue_size)
        self._callbacks: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._conns: list[_Conn] = []
        self._by_device: dict[str, _Conn] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._dispatcher: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._lock = threading.Lock()  # guards the status snapshot
        self.dropped_requests = 0

    # -- life cycle (any thread) -------------------------------------------------------------------
    def start(self, wait_connected_s: float | None = None) -> None:
        """Start the loop thread and connect to every endpoint. With ``wait_connected_s``, wait
        that long for all endpoints to be connected (raises TimeoutError if they are not)."""
        if self._thread is not None:
            raise RuntimeError("the ingress is already started")
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="opcua-ingress", daemon=True)
        self._thread.start()
        ready.wait()
        self._dispatcher = threading.Thread(target=self._dispatch, name="opcua-ingress-dispatch", daemon=True)
        self._dispatcher.start()
        if wait_connected_s is not None and not self.wait_connected(wait_connected_s):
            raise TimeoutError(f"not every OPC UA device was connected within {wait_connected_s:g} s: "
                               f"{[s.url + ' ' + s.last_error for s in self.status() if not s.connected]}")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Disconnect everything and end the threads (pending deliveries fail)."""
        if self._thread is None or self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout_s)
        except Exception:  # noqa: BLE001  a stuck disconnect must not block the caller
            log.warning("OPC UA ingress did not shut down cleanly within %.1f s", timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        self._callbacks.put(None)
        if self._dispatcher is not None:
            self._dispatcher.join(timeout_s)
        self._thread = self._dispatcher = None

    def __enter__(self) -> "OpcuaIngress":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once every endpoint is connected (polls the status; any thread)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(s.connected for s in self.status()):
                return True
            time.sleep(0.02)
        return all(s.connected for s in self.status())

    def status(self) -> list[EndpointStatus]:
        """A snapshot of every endpoint's connection state (any thread)."""
        with self._lock:
            return [EndpointStatus(c.status.url, c.status.connected, list(c.status.device_ids), c.status.connects,
                                   c.status.last_error) for c in self._conns]

    def device_info(self, device_id: str) -> DeviceInfo | None:
        """Kind and endpoint of a device seen on some connection (any thread); None if never seen."""
        with self._lock:
            return self._device_info.get(device_id)

    # -- the caller's side (any thread) -------------------------------------------------------------
    def get_request(self, timeout: float | None = None) -> TaskRequest | None:
        """Next request (when no ``on_request`` callback is set); None after ``timeout`` seconds."""
        try:
            return self._requests.get(timeout=timeout)
        except queue.Empty:
            return None

    def submit_decision(self, decision: Decision) -> concurrent.futures.Future:
        """Deliver a decision to its device (``decision.device_id``). Returns at once; the future
        resolves to None when the device accepted it, or raises :class:`DeliveryRefused` /
        :class:`DeliveryError`."""
        if not isinstance(decision, Decision):
            raise TypeError("submit_decision takes an mqtt_bridge.schemas.Decision")
        return self._submit("DeliverDecision", decision.device_id, m.decision_to_args(decision))

    def submit_result(self, result: TaskResult) -> concurrent.futures.Future:
        """Deliver a task's terminal state to its device; same contract as :meth:`submit_decision`."""
        if not isinstance(result, TaskResult):
            raise TypeError("submit_result takes an mqtt_bridge.schemas.TaskResult")
        return self._submit("DeliverResult", result.device_id, m.result_to_args(result))

    def _submit(self, method: str, device_id: str, args: list[ua.Variant]) -> concurrent.futures.Future:
        if self._loop is None or self._thread is None:
            raise RuntimeError("the ingress is not started")
        return asyncio.run_coroutine_threadsafe(self._deliver(method, device_id, args), self._loop)

    # -- loop thread -------------------------------------------------------------------------------
    def _run_loop(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._stopping = asyncio.Event()
        self._conns = [_Conn(ep) for ep in self._endpoints]
        self._tasks = [self._loop.create_task(self._run_endpoint(c), name=f"ingress {c.ep.url}") for c in self._conns]
        ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _shutdown(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _set_status(self, conn: _Conn, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(conn.status, k, v)

    async def _run_endpoint(self, conn: _Conn) -> None:
        s = self.settings
        delay = s.backoff_min_s
        sec = conn.ep.security or self._security
        assert self._stopping is not None and sec is not None
        while not self._stopping.is_set():
            # A new Client on every attempt: reusing one after a connection loss can hang (#1660).
            client = Client(conn.ep.url, timeout=s.request_timeout_s, watchdog_intervall=s.watchdog_s)
            client.session_timeout = s.session_timeout_ms
            lost = asyncio.Event()

            async def on_lost(exc: Exception, lost: asyncio.Event = lost) -> None:
                log.warning("%s: connection lost (%s)", conn.ep.url, exc)
                lost.set()

            client.connection_lost_callback = on_lost
            attached = False
            try:
                await asyncio.wait_for(apply_client_security(client, sec), 3 * s.request_timeout_s)
                await asyncio.wait_for(client.connect(), 3 * s.request_timeout_s)
                await self._attach(conn, client)
                attached = True
                delay = s.backoff_min_s
                waiters = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self._stopping.wait())]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
            except asyncio.CancelledError:
                await self._detach(conn, client)
                raise
            except Exception as exc:  # noqa: BLE001  any failure: drop the client, back off, retry
                msg = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._set_status(conn, last_error=msg)
                log.warning("%s: %s failed: %s", conn.ep.url, "session" if attached else "connect", msg)
            await self._detach(conn, client)
            if self._stopping.is_set():
                break
            wait = delay * random.uniform(0.8, 1.2)
            log.info("%s: reconnecting in %.2f s", conn.ep.url, wait)
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, s.backoff_max_s)

    async def _attach(self, conn: _Conn, client: Client) -> None:
        """Find the device objects, subscribe to their events, hand over their pending requests."""
        ns = await client.get_namespace_index(m.NAMESPACE_URI)
        base_event = client.nodes.base_event_type
        request_type = await base_event.get_child(f"{ns}:{m.REQUEST_EVENT_TYPE}")
        finished_type = await base_event.get_child(f"{ns}:{m.FINISHED_EVENT_TYPE}")
        executed_type = await base_event.get_child(f"{ns}:{m.EXECUTED_EVENT_TYPE}")
        conn.request_type, conn.finished_type = request_type.nodeid, finished_type.nodeid
        conn.executed_type = executed_type.nodeid
        devices: dict[str, _Device] = {}
        kinds: dict[str, str] = {}
        for child in await client.nodes.objects.get_children():
            if child.nodeid.NamespaceIndex != ns:
                continue
            try:
                device_id = await (await child.get_child(f"{ns}:DeviceId")).read_value()
            except ua.UaError:
                continue
            methods = {name: (await child.get_child(f"{ns}:{name}")).nodeid
                       for name in ("DeliverDecision", "DeliverResult")}
            devices[device_id] = _Device(device_id, child.nodeid, methods)
            kinds[device_id] = await (await child.get_child(f"{ns}:DeviceKind")).read_value()
        if not devices:
            raise RuntimeError(f"no AIGC device object found in namespace {m.NAMESPACE_URI}")
        sub = await client.create_subscription(self.settings.publish_interval_ms, _EventHandler(self, conn))
        filters = [(t, await own_fields_filter(t, ns)) for t in (request_type, finished_type, executed_type)]
        for dev in devices.values():
            for etype, evfilter in filters:
                await sub.subscribe_events(client.get_node(dev.object_id), etype, evfilter=evfilter)
        conn.client, conn.devices = client, devices
        with self._lock:
            for device_id, kind in kinds.items():
                self._device_info[device_id] = DeviceInfo(device_id, kind, conn.ep.url)
        for device_id in devices:
            self._by_device[device_id] = conn
        conn.connected.set()
        self._set_status(conn, connected=True, device_ids=sorted(devices), connects=conn.status.connects + 1,
                         last_error="")
        log.info("%s: connected, devices %s", conn.ep.url, ", ".join(sorted(devices)))
        # Requests raised while we were away (events are not queued for absent subscribers).
        for dev in devices.values():
            raw = await client.get_node(dev.object_id).get_child(f"{ns}:PendingRequests")
            for item in json.loads(await raw.read_value() or "[]"):
                try:
                    self._hand_over(TaskRequest.model_validate(item))
                except ValidationError as exc:
                    log.warning("%s: pending request that is not valid dropped: %s", conn.ep.url, exc.errors()[0])
            raw = await client.get_node(dev.object_id).get_child(f"{ns}:PendingExecutions")
            for item in json.loads(await raw.read_value() or "[]"):
                try:
                    self._device_execution(m.ExecutionReport.model_validate(item))
                except ValidationError as exc:
                    log.warning("%s: pending execution that is not valid dropped: %s", conn.ep.url, exc.errors()[0])

    async def _detach(self, conn: _Conn, client: Client) -> None:
        conn.connected.clear()
        if conn.client is client:
            conn.client = None
        self._set_status(conn, connected=False)
        try:
            await asyncio.wait_for(client.disconnect(), 2.0)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001  the connection may be dead already
            pass
        client.disconnect_socket()

    async def _deliver(self, method: str, device_id: str, args: list[ua.Variant]) -> None:
        deadline = time.monotonic() + self.settings.delivery_timeout_s
        last = "never connected"
        while True:
            remaining = deadline - time.monotonic()
            conn = self._by_device.get(device_id)
            if remaining <= 0:
                raise DeliveryError(f"{method} for device '{device_id}' not delivered within "
                                    f"{self.settings.delivery_timeout_s:g} s ({last})")
            if conn is None:
                if all(c.status.connects > 0 for c in self._conns):
                    raise DeliveryError(f"no connected OPC UA server hosts device '{device_id}'")
                await asyncio.sleep(min(0.05, remaining))
                continue
            try:
                await asyncio.wait_for(conn.connected.wait(), remaining)
            except asyncio.TimeoutError:
                continue
            client, dev = conn.client, conn.devices.get(device_id)
            if client is None or dev is None:
                await asyncio.sleep(0.05)
                continue
            req = ua.CallMethodRequest(ObjectId=dev.object_id, MethodId=dev.methods[method], InputArguments=args)
            try:
                res = await conn.call(client, req)
            except (OSError, asyncio.TimeoutError, ConnectionError, ua.UaError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.info("%s to %s failed (%s); retrying after the reconnect", method, device_id, last)
                await asyncio.sleep(0.05)
                continue
            if not res.StatusCode.is_good():
                sentence = next((d.AdditionalInfo for d in res.InputArgumentDiagnosticInfos if d.AdditionalInfo), "")
                raise DeliveryRefused(res.StatusCode, sentence)
            return

    def _hand_over(self, req: TaskRequest) -> None:
        """A request seen (event or pending list): de-duplicate, then queue or call back."""
        key = (req.device_id, req.task_id)
        if key in self._seen:
            return
        self._seen[key] = None
        while len(self._seen) > SEEN_KEEP:
            self._seen.popitem(last=False)
        if self.on_request is not None:
            self._callbacks.put(("request", req))
            return
        try:
            self._requests.put_nowait(req)
        except queue.Full:
            # Not lost for good: the device still lists it in PendingRequests until it is decided.
            self.dropped_requests += 1
            self._seen.pop(key, None)
            log.warning("request queue full (%d); dropped %s (still pending on the device)",
                        self.settings.queue_size, req.task_id)

    def _device_execution(self, report: m.ExecutionReport) -> None:
        key = (report.result.device_id, report.result.task_id, report.part)
        if key in self._seen_runs:
            return
        self._seen_runs[key] = None
        while len(self._seen_runs) > SEEN_KEEP:
            self._seen_runs.popitem(last=False)
        if self.on_device_result is not None:
            self._callbacks.put(("execution", report))

    def _device_finished(self, result: TaskResult) -> None:
        if self.on_device_finished is not None:
            self._callbacks.put(("finished", result))

    # -- dispatcher thread ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            item = self._callbacks.get()
            if item is None:
                return
            kind, payload = item
            try:
                if kind == "request" and self.on_request is not None:
                    self.on_request(payload)
                elif kind == "execution" and self.on_device_result is not None:
                    self.on_device_result(payload)
                elif kind == "finished" and self.on_device_finished is not None:
                    self.on_device_finished(payload)
            except Exception:  # noqa: BLE001  the caller's bug must not stop the ingress
                log.exception("OPC UA ingress callback %s failed", kind)


def request_task_call(obj_id: ua.NodeId, method_id: ua.NodeId, task_kind: str, model_name: str, input_bits: int,
                      work_units: int, deadline_s: float, prompt: str = "") -> ua.CallMethodRequest:
    """A typed RequestTask call (for tools and tests that act as a PLC program or MES)."""
    return ua.CallMethodRequest(ObjectId=obj_id, MethodId=method_id, InputArguments=[
        ua.Variant(task_kind, ua.VariantType.String), ua.Variant(model_name, ua.VariantType.String),
        ua.Variant(int(input_bits), ua.VariantType.Int64), ua.Variant(int(work_units), ua.VariantType.Int32),
        ua.Variant(float(deadline_s), ua.VariantType.Double), ua.Variant(prompt, ua.VariantType.String)])


def main(argv: list[str] | None = None) -> int:
    """Lab tool: connect to device servers, print every request as a JSON line, and optionally
    answer each with a fixed decision (``--decide device`` makes the devices run their tasks)."""
    import argparse
    import signal
    from datetime import datetime, timezone

    from .pki import LabPki

    p = argparse.ArgumentParser(prog="python -m opcua_devices.ingress", description=main.__doc__.split("\n")[0])
    p.add_argument("endpoints", nargs="+", help="device server URLs, e.g. opc.tcp://localhost:4841/aigc/")
    p.add_argument("--pki", required=True, help="lab PKI directory (python -m opcua_devices.pki)")
    p.add_argument("--client", default="gateway", help="client name in the PKI (also the user name)")
    p.add_argument("--decide", choices=["none", "device", "cloud"], default="none",
                   help="answer every request with this target (cloud: also a 'done' result)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    box: list[OpcuaIngress] = []

    def on_request(req: TaskRequest) -> None:
        print(req.model_dump_json(exclude_none=True), flush=True)
        if a.decide == "none":
            return
        now = datetime.now(timezone.utc)
        box[0].submit_decision(Decision(task_id=req.task_id, device_id=req.device_id, target=a.decide,
                                        model_name=req.model_name, policy="ingress-cli fixed", decided_at=now))
        if a.decide == "cloud":
            box[0].submit_result(TaskResult(task_id=req.task_id, device_id=req.device_id, state="done",
                                            executed_on="cloud", finished_at=now))

    def on_execution(x: m.ExecutionReport) -> None:  # acting as the gateway: the device's run ends the task
        print(x.model_dump_json(exclude_none=True), flush=True)
        if a.decide == "device":
            box[0].submit_result(x.result)

    ing = OpcuaIngress(a.endpoints, LabPki(Path(a.pki)).client_security(a.client), on_request=on_request,
                       on_device_result=on_execution,
                       on_device_finished=lambda r: print(r.model_dump_json(exclude_none=True), flush=True))
    box.append(ing)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ing.start()
    stop.wait()
    ing.stop()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
