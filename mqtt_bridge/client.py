"""paho-mqtt 2.x clients of the MQTT side, free of ROS.

* :class:`BridgeClient`: the gateway side. Subscribes (QoS 1, persistent session) to every
  device's request and status topic, validates every payload, answers every bad one with an
  :class:`~mqtt_bridge.schemas.ErrorReply` on that device's error topic, hands valid requests to a
  user callback (in its own thread) or a queue, and publishes decisions and results.
* :class:`DeviceClient`: the camera side. Publishes requests and waits for the decision and the
  result; keeps a retained online status with an offline last will.

Both set ``TCP_NODELAY`` on their socket (with Nagle on, a QoS 1 request/reply round trip waits
for delayed ACKs: ~44 ms instead of <1 ms on loopback), speak MQTT 5 by default (3.1.1 as an
option), use TLS with a CA file (optional client certificate) and username/password.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import queue
import socket
import ssl
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from .schemas import (
    Decision,
    DeviceStatus,
    ErrorCode,
    ErrorReply,
    ExecutionPart,
    ExecutionReport,
    ExecutionState,
    FieldIssue,
    TaskRequest,
    TaskResult,
    utc_now,
)
from .topics import (
    Channel,
    DeviceAddress,
    TopicError,
    bridge_status_topic,
    check_level,
    parse_topic,
    sibling_topic,
    subscription,
)

log = logging.getLogger("mqtt_bridge")

EXCERPT_BYTES = 200
STOPPING_REASON = "the bridge is stopping and cannot hand this payload on; send it again"


@dataclass
class MqttSettings:
    """How to reach the broker."""

    host: str = "localhost"
    port: int = 8883
    username: str | None = None
    password: str | None = None
    tls: bool = True
    ca_file: str | None = None  # CA that signed the broker's certificate (None: system store)
    certfile: str | None = None  # optional client certificate (PEM)
    keyfile: str | None = None  # its key (PEM)
    tls_check_hostname: bool = True
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = 30
    session_expiry_s: int = 24 * 3600  # MQTT 5 persistent session lifetime while disconnected
    tcp_nodelay: bool = True
    reconnect_min_delay_s: int = 1
    reconnect_max_delay_s: int = 16
    connect_timeout_s: float = 10.0
    max_inflight: int = 100


class MqttRefused(ConnectionError):
    """The broker refused the connection (bad credentials, not authorized, ...)."""


class RequestRefused(RuntimeError):
    """The bridge answered a request with an :class:`ErrorReply`."""

    def __init__(self, reply: ErrorReply):
        super().__init__(f"{reply.code.value}: {reply.reason}")
        self.reply = reply


def payload_excerpt(payload: bytes, limit: int = EXCERPT_BYTES) -> str:
    text = payload[:limit].decode("utf-8", errors="replace")
    return text + ("..." if len(payload) > limit else "")


def encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (a lone surrogate, e.g. from JSON ``"\\ud800"``) as a
    backslash escape: pydantic refuses such strings, and an error reply that echoes one must still build."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


class _Endpoint:
    """Connection handling shared by the bridge and the device clients."""

    def __init__(self, settings: MqttSettings, client_id: str, *, persistent_session: bool,
                 will: tuple[str, bytes] | None):
        self.settings = settings
        self.client_id = client_id
        self._v5 = settings.protocol == "5"
        self._persistent = persistent_session
        proto = MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=proto,
            clean_session=None if self._v5 else not persistent_session,
        )
        c = self._client
        if settings.username is not None:
            c.username_pw_set(settings.username, settings.password)
        if settings.tls:
            c.tls_set(ca_certs=settings.ca_file, certfile=settings.certfile, keyfile=settings.keyfile,
                      cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            c.tls_insecure_set(not settings.tls_check_hostname)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.reconnect_delay_set(settings.reconnect_min_delay_s, settings.reconnect_max_delay_s)
        c.max_inflight_messages_set(settings.max_inflight)
        c.max_queued_messages_set(0)
        c.on_socket_open = self._on_socket_open
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message_safe
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        self.connected = threading.Event()
        self._first_connack = threading.Event()
        self._refused: ReasonCode | None = None
        self._started = False
        self._pub_lock = threading.Lock()
        self._pub_waiters: dict[int, Future] = {}
        self._pub_done: OrderedDict[int, ReasonCode] = OrderedDict()
        self.connect_count = 0
        self.subscribe_failures: list[tuple[str, str]] = []
        self._sub_mids: dict[int, list[str]] = {}

    # -- subclass hooks ---------------------------------------------------------------------
    def _subscriptions(self) -> list[str]:
        return []

    def _after_connect(self, session_present: bool) -> None:
        pass

    def _handle_message(self, msg: mqtt.MQTTMessage) -> None:
        pass

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        """Connect (in the background, retrying with backoff) and start the network thread.
        With ``wait``, block until the first CONNACK; raise :class:`MqttRefused` if refused."""
        s = self.settings
        props = None
        kwargs: dict[str, Any] = {}
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            if self._persistent:
                props.SessionExpiryInterval = s.session_expiry_s
            kwargs["clean_start"] = not self._persistent
        self._first_connack.clear()
        self._refused = None
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s, properties=props, **kwargs)
        self._client.loop_start()
        self._started = True
        if wait:
            if not self._first_connack.wait(s.connect_timeout_s):
                self.stop()
                raise TimeoutError(f"{self.client_id}: no CONNACK from {s.host}:{s.port} "
                                   f"within {s.connect_timeout_s} s")
            if self._refused is not None:
                reason = self._refused
                self.stop()
                raise MqttRefused(f"{self.client_id}: broker {s.host}:{s.port} refused the connection: {reason}")

    def _before_stop(self) -> None:
        pass

    def stop(self) -> None:
        """Clean shutdown: no last will is sent (subclasses publish their offline status first)."""
        if not self._started:
            return
        try:
            self._before_stop()
        finally:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False
            self.connected.clear()

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a crash or a pulled cable would: the broker
        publishes the last will and keeps the persistent session. The client is unusable after."""
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._started = False
        self.connected.clear()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- paho callbacks (network thread) ------------------------------------------------------
    def _on_socket_open(self, client, userdata, sock) -> None:
        if self.settings.tcp_nodelay:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError) as exc:  # e.g. a unix or websocket transport
                log.warning("%s: cannot set TCP_NODELAY: %s", self.client_id, exc)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = reason_code
            log.error("%s: connection refused: %s", self.client_id, reason_code)
            if not self._first_connack.is_set():
                self._first_connack.set()
            return
        self.connect_count += 1
        log.info("%s: connected (session present: %s)", self.client_id, flags.session_present)
        # Resubscribe on every connect: a persistent session keeps the subscriptions, but the
        # session may have expired or the broker lost it.
        topics = self._subscriptions()
        if topics:
            rc, mid = client.subscribe([(t, 1) for t in topics])
            if rc == mqtt.MQTT_ERR_SUCCESS:
                self._sub_mids[mid] = topics
        self._after_connect(bool(flags.session_present))
        self.connected.set()
        self._first_connack.set()

    def _on_connect_fail(self, client, userdata) -> None:
        log.warning("%s: cannot reach %s:%s, retrying", self.client_id, self.settings.host, self.settings.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code is not None and getattr(reason_code, "is_failure", False):
            log.warning("%s: disconnected: %s", self.client_id, reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        topics = self._sub_mids.pop(mid, [])
        for topic, rc in zip(topics, reason_codes):
            if rc.is_failure:
                self.subscribe_failures.append((topic, str(rc)))
                log.error("%s: subscription to %s refused: %s", self.client_id, topic, rc)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._pub_lock:
            fut = self._pub_waiters.pop(mid, None)
            if fut is None:
                self._pub_done[mid] = reason_code
                while len(self._pub_done) > 1000:
                    self._pub_done.popitem(last=False)
        if fut is not None:
            fut.set_result(reason_code)

    def _message_failed(self, msg: mqtt.MQTTMessage, exc: Exception) -> None:
        pass

    def _on_message_safe(self, client, userdata, msg) -> None:
        try:
            self._handle_message(msg)
        except Exception as exc:  # never let one payload stop the network thread
            log.exception("%s: failed on a message on %s", self.client_id, msg.topic)
            try:
                self._message_failed(msg, exc)
            except Exception:
                log.exception("%s: could not answer the failed message on %s", self.client_id, msg.topic)

    # -- publishing ---------------------------------------------------------------------------
    def publish_raw(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
                    wait_s: float | None = None) -> ReasonCode | mqtt.MQTTMessageInfo:
        """Publish; with ``wait_s`` wait for the PUBACK and return its reason code (MQTT 5 reports
        'Not authorized' for a publish the ACL denies; MQTT 3.1.1 cannot tell)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if wait_s is None:
            return info
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            raise ConnectionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if qos == 0:
            info.wait_for_publish(wait_s)
            return ReasonCode(PacketTypes.PUBACK, identifier=0)
        with self._pub_lock:
            rc = self._pub_done.pop(info.mid, None)
            if rc is None:
                fut: Future = Future()
                self._pub_waiters[info.mid] = fut
        if rc is not None:
            return rc
        try:
            return fut.result(wait_s)
        finally:
            with self._pub_lock:
                self._pub_waiters.pop(info.mid, None)


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IncomingRequest:
    """A validated request handed to the bridge's user."""

    request: TaskRequest
    address: DeviceAddress
    topic: str
    received_monotonic_s: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class IncomingExecution:
    """A validated execution report (the device ran its share) handed to the bridge's user."""

    report: ExecutionReport
    address: DeviceAddress
    topic: str
    received_monotonic_s: float = field(default_factory=time.monotonic)


class BridgeClient(_Endpoint):
    """The gateway side of the MQTT bridge (ROS-free).

    ``on_request(IncomingRequest)`` runs in the bridge's request dispatcher thread (never in
    paho's network thread), so it may block briefly and may publish. Without ``on_request`` the
    valid requests wait in a queue: call :meth:`get_request`. The message is acknowledged
    (PUBACK) once it is in the hand-off queue. ``on_execution(IncomingExecution)`` likewise
    receives the devices' execution reports in a second dispatcher thread (without it:
    :meth:`get_execution`).

    ``paused=True`` connects and acknowledges into the hand-off queues but does not call the
    callbacks until :meth:`resume` (a ROS lifecycle node: configured, not yet active). :meth:`stop`
    answers every request still waiting in a hand-off queue with an ``unavailable`` error reply,
    so a device never waits for a request the bridge acknowledged and then dropped.
    """

    def __init__(self, settings: MqttSettings, *, bridge_id: str = "bridge", enterprise: str = "factory",
                 site: str = "+", on_request: Callable[[IncomingRequest], None] | None = None,
                 on_execution: Callable[[IncomingExecution], None] | None = None,
                 known_models: Iterable[str] | None = None, client_id: str | None = None,
                 queue_size: int = 10_000, max_payload_bytes: int = 64 * 1024,
                 dedupe_window: int = 10_000, paused: bool = False):
        check_level(bridge_id, "bridge id")
        check_level(enterprise, "enterprise")
        if site != "+":
            check_level(site, "site")
        self.bridge_id = bridge_id
        self.enterprise = enterprise
        self.site = site
        self.status_topic = bridge_status_topic(bridge_id, enterprise)
        will = DeviceStatus(device_id=bridge_id, state="offline", role="bridge",
                            reason="connection lost (last will)").to_json()
        super().__init__(settings, client_id or f"aigc-bridge-{bridge_id}", persistent_session=True,
                         will=(self.status_topic, will))
        self.on_request = on_request
        self.on_execution = on_execution
        self.known_models = frozenset(known_models) if known_models is not None else None
        self.max_payload_bytes = max_payload_bytes
        self._queue: queue.Queue[IncomingRequest] = queue.Queue(maxsize=queue_size)
        self._exec_queue: queue.Queue[IncomingExecution] = queue.Queue(maxsize=queue_size)
        self._running = threading.Event()  # the dispatchers call the callbacks only while set
        if not paused:
            self._running.set()
        self._stopping = False
        self._addresses: dict[str, DeviceAddress] = {}
        self._seen: OrderedDict[tuple[str, ...], bytes] = OrderedDict()  # requests and execution reports
        self._dedupe_window = dedupe_window
        self._lock = threading.Lock()
        self.device_status: dict[str, DeviceStatus] = {}
        self.stats: dict[str, int] = {"received": 0, "accepted": 0, "redelivered": 0, "errors": 0,
                                      "executions": 0}
        self.error_counts: dict[str, int] = {}
        self._dispatcher: threading.Thread | None = None
        self._exec_dispatcher: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        self._stopping = False
        if self.on_request is not None and (self._dispatcher is None or not self._dispatcher.is_alive()):
            self._dispatcher = threading.Thread(target=self._dispatch, args=(self._queue, self._call_request),
                                                name=f"{self.client_id}-dispatch", daemon=True)
            self._dispatcher.start()
        if self.on_execution is not None and (self._exec_dispatcher is None or not self._exec_dispatcher.is_alive()):
            self._exec_dispatcher = threading.Thread(target=self._dispatch,
                                                     args=(self._exec_queue, self._call_execution),
                                                     name=f"{self.client_id}-exec-dispatch", daemon=True)
            self._exec_dispatcher.start()
        try:
            super().start(wait)
        except BaseException:
            self._stop_dispatcher()
            raise

    def pause(self) -> None:
        """Keep acknowledging into the hand-off queues, but stop calling the callbacks."""
        self._running.clear()

    def resume(self) -> None:
        """Call the callbacks again (first for what queued up while paused)."""
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def _before_stop(self) -> None:
        if self.connected.is_set():
            status = DeviceStatus(device_id=self.bridge_id, state="offline", role="bridge",
                                  reason="clean shutdown", at=utc_now())
            try:
                self.publish_raw(self.status_topic, status.to_json(), retain=True, wait_s=2.0)
            except Exception as exc:
                log.warning("%s: could not publish offline status: %s", self.client_id, exc)

    def stop(self) -> None:
        """Clean shutdown: the dispatchers finish the callback in progress and take nothing more,
        every request still waiting in the hand-off queue, and every one arriving from now on, gets
        an ``unavailable`` error reply, the bridge publishes its offline status and disconnects."""
        if self._started:
            self._stop_dispatcher()
            self._refuse_waiting()
        super().stop()
        self._stop_dispatcher()

    def abort(self) -> None:
        super().abort()
        self._stop_dispatcher()

    def _stop_dispatcher(self) -> None:
        # set under the lock the hand-off queues are filled under: nothing is queued after this
        with self._lock:
            self._stopping = True
        for thread in (self._dispatcher, self._exec_dispatcher):
            if thread is not None and thread.is_alive():
                thread.join(5)  # the dispatchers see _stopping within 0.1 s, after the callback in progress
        self._dispatcher = self._exec_dispatcher = None

    def _refuse_waiting(self) -> None:
        """Answer the requests and reports acknowledged but never handed on (callback mode only)."""
        for q, enabled in ((self._queue, self.on_request is not None),
                           (self._exec_queue, self.on_execution is not None)):
            if not enabled:
                continue
            while True:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                self._refuse(item)

    def _refuse(self, item: IncomingRequest | IncomingExecution) -> None:
        """``unavailable`` for an acknowledged payload the bridge will not hand on; forgotten, so the
        device's resend is not taken for a redelivery."""
        if isinstance(item, IncomingRequest):
            model = item.request
            self.forget(item.address.device, model.task_id)
        else:
            model = item.report
            self.forget(item.address.device, model.task_id, part=model.part)
        self.reply_error(item.address, ErrorCode.unavailable, STOPPING_REASON, model.to_json(),
                         task_id=model.task_id, topic=item.topic)

    def _subscriptions(self) -> list[str]:
        return [subscription(ch, self.enterprise, site=self.site)
                for ch in (Channel.request, Channel.status, Channel.execution)]

    def _after_connect(self, session_present: bool) -> None:
        status = DeviceStatus(device_id=self.bridge_id, state="online", role="bridge", at=utc_now())
        self._client.publish(self.status_topic, status.to_json(), qos=1, retain=True)

    # -- hand-off -----------------------------------------------------------------------------
    def get_request(self, timeout: float | None = None) -> IncomingRequest | None:
        """Next valid request (only without ``on_request``); None on timeout."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return item

    def get_execution(self, timeout: float | None = None) -> IncomingExecution | None:
        """Next valid execution report (only without ``on_execution``); None on timeout."""
        try:
            return self._exec_queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _call_request(self, item: IncomingRequest) -> None:
        try:
            self.on_request(item)  # type: ignore[misc]
        except Exception:
            log.exception("%s: on_request failed for task %s", self.client_id, item.request.task_id)

    def _call_execution(self, item: IncomingExecution) -> None:
        try:
            self.on_execution(item)  # type: ignore[misc]
        except Exception:
            log.exception("%s: on_execution failed for task %s", self.client_id, item.report.task_id)

    def _dispatch(self, q: queue.Queue, call: Callable) -> None:
        # _stopping is checked before every item, not only on an empty queue: stop() must not wait for
        # (or, after its join times out, disconnect under) callbacks for everything still queued
        while not self._stopping:
            if not self._running.wait(0.1):  # paused: items wait in the queue (stop() answers them)
                continue
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if self._stopping:  # taken just as stop() began: answered like those still waiting
                self._refuse(item)
                return
            call(item)

    # -- incoming -------------------------------------------------------------------------------
    def _message_failed(self, msg: mqtt.MQTTMessage, exc: Exception) -> None:
        """A bug on this payload: the device still hears about it (when its topic has an error sibling)."""
        payload = bytes(msg.payload)
        task_id = None
        try:
            obj = json.loads(payload.decode("utf-8"))
            if isinstance(obj, dict) and isinstance(obj.get("task_id"), str):
                task_id = obj["task_id"]
        except (ValueError, RecursionError):
            pass
        self._reply_error(msg.topic, ErrorCode.internal_error,
                          f"the bridge failed on this payload ({type(exc).__name__}: {exc}); this is a bug, "
                          f"please report it", payload, task_id=task_id)

    def _handle_message(self, msg: mqtt.MQTTMessage) -> None:
        self.stats["received"] += 1
        payload = bytes(msg.payload)
        try:
            address, channel = parse_topic(msg.topic)
        except TopicError as exc:
            self._reply_error(msg.topic, ErrorCode.invalid_topic, str(exc), payload)
            return
        if channel == Channel.status:
            self._handle_status(msg.topic, address, payload)
        elif channel == Channel.request:
            self._handle_request(msg.topic, address, payload)
        elif channel == Channel.execution:
            self._handle_execution(msg.topic, address, payload)

    def _decode(self, topic: str, address: DeviceAddress, payload: bytes) -> dict | None:
        if len(payload) > self.max_payload_bytes:
            self._reply_error(topic, ErrorCode.payload_too_large,
                              f"payload is {len(payload)} bytes, the bridge accepts at most "
                              f"{self.max_payload_bytes}", payload, address=address)
            return None
        try:
            obj = json.loads(payload.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self._reply_error(topic, ErrorCode.malformed_json, f"payload is not UTF-8: {exc}", payload,
                              address=address)
            return None
        except (ValueError, RecursionError) as exc:
            self._reply_error(topic, ErrorCode.malformed_json, f"payload is not valid JSON: {exc}", payload,
                              address=address)
            return None
        if not isinstance(obj, dict):
            self._reply_error(topic, ErrorCode.malformed_json,
                              f"payload is a JSON {type(obj).__name__}, expected a JSON object", payload,
                              address=address)
            return None
        return obj

    def _handle_status(self, topic: str, address: DeviceAddress, payload: bytes) -> None:
        if not payload:  # a retained status being cleared
            return
        obj = self._decode(topic, address, payload)
        if obj is None:
            return
        try:
            status = DeviceStatus.model_validate(obj)
        except ValidationError as exc:
            self._reply_schema_violation(topic, address, payload, obj, exc, "DeviceStatus")
            return
        if status.device_id != address.device:
            self._reply_error(topic, ErrorCode.device_mismatch,
                              f"status names device_id {status.device_id!r} but was published under "
                              f"device {address.device!r}", payload, address=address)
            return
        with self._lock:
            self.device_status[address.device] = status
            self._addresses.setdefault(address.device, address)

    def _handle_request(self, topic: str, address: DeviceAddress, payload: bytes) -> None:
        obj = self._decode(topic, address, payload)
        if obj is None:
            return
        try:
            req = TaskRequest.model_validate(obj)
        except ValidationError as exc:
            self._reply_schema_violation(topic, address, payload, obj, exc, "TaskRequest")
            return
        if req.device_id != address.device:
            self._reply_error(topic, ErrorCode.device_mismatch,
                              f"request names device_id {req.device_id!r} but was published under device "
                              f"{address.device!r}", payload, address=address, task_id=req.task_id)
            return
        if self.known_models is not None and req.model_name not in self.known_models:
            self._reply_error(topic, ErrorCode.unknown_model,
                              f"model {req.model_name!r} is not served here; known models: "
                              f"{', '.join(sorted(self.known_models))}", payload, address=address,
                              task_id=req.task_id)
            return
        digest = hashlib.blake2b(req.to_json(), digest_size=16).digest()  # canonical form, not raw bytes
        key = (address.device, req.task_id)
        with self._lock:
            previous = self._seen.get(key)
            if previous is None:
                self._seen[key] = digest
                while len(self._seen) > self._dedupe_window:
                    self._seen.popitem(last=False)
            self._addresses[address.device] = address
        if previous is not None:
            if previous == digest:
                # The same request again: a QoS 1 redelivery (or a device retry); it is already
                # being handled and its answer will come on the decision/result topics.
                self.stats["redelivered"] += 1
                log.info("%s: request %s/%s delivered again; already handled", self.client_id,
                         address.device, req.task_id)
            else:
                self._reply_error(topic, ErrorCode.duplicate_task,
                                  f"task_id {req.task_id!r} was already used by a different request of "
                                  f"this device", payload, address=address, task_id=req.task_id)
            return
        if self._hand_off(self._queue, IncomingRequest(req, address, topic), key, req.task_id, payload, "requests"):
            self.stats["accepted"] += 1

    def _handle_execution(self, topic: str, address: DeviceAddress, payload: bytes) -> None:
        obj = self._decode(topic, address, payload)
        if obj is None:
            return
        try:
            rep = ExecutionReport.model_validate(obj)
        except ValidationError as exc:
            self._reply_schema_violation(topic, address, payload, obj, exc, "ExecutionReport")
            return
        if rep.device_id != address.device:
            self._reply_error(topic, ErrorCode.device_mismatch,
                              f"execution report names device_id {rep.device_id!r} but was published under "
                              f"device {address.device!r}", payload, address=address, task_id=rep.task_id)
            return
        digest = hashlib.blake2b(rep.to_json(), digest_size=16).digest()
        key = (address.device, rep.task_id, rep.part.value)
        with self._lock:
            previous = self._seen.get(key)
            if previous is None:
                self._seen[key] = digest
                while len(self._seen) > self._dedupe_window:
                    self._seen.popitem(last=False)
            self._addresses[address.device] = address
        if previous is not None:
            if previous == digest:
                self.stats["redelivered"] += 1
            else:
                self._reply_error(topic, ErrorCode.duplicate_task,
                                  f"task {rep.task_id!r} already has a different {rep.part.value} execution "
                                  f"report from this device", payload, address=address, task_id=rep.task_id)
            return
        if self._hand_off(self._exec_queue, IncomingExecution(rep, address, topic), key, rep.task_id, payload,
                          "execution reports"):
            self.stats["executions"] += 1

    def _hand_off(self, q: queue.Queue, item: IncomingRequest | IncomingExecution, key: tuple[str, ...],
                  task_id: str, payload: bytes, what: str) -> bool:
        """Queue a validated payload (acknowledged once this returns); when stopping or full, answer
        it instead and forget its key so that the device's resend is taken."""
        # under the lock stop() sets _stopping with: nothing is queued after stop() drained the queue
        with self._lock:
            stopping, full = self._stopping, False
            if not stopping:
                try:
                    q.put_nowait(item)
                except queue.Full:
                    full = True
            if stopping or full:
                self._seen.pop(key, None)
        if stopping:
            self._reply_error(item.topic, ErrorCode.unavailable, STOPPING_REASON, payload, address=item.address,
                              task_id=task_id)
        elif full:
            self._reply_error(item.topic, ErrorCode.overloaded,
                              f"the bridge has {q.maxsize} {what} waiting; retry later", payload,
                              address=item.address, task_id=task_id)
        return not (stopping or full)

    def forget(self, device_id: str, task_id: str, part: ExecutionPart | str | None = None) -> None:
        """Forget that a request (``part`` None) or the execution report of ``part`` was seen (its
        hand-off failed), so the device may send it again."""
        key = (device_id, task_id) if part is None else (device_id, task_id, ExecutionPart(part).value)
        with self._lock:
            self._seen.pop(key, None)

    def reply_error(self, address: DeviceAddress, code: ErrorCode | str, reason: str, payload: bytes = b"", *,
                    task_id: str | None = None, topic: str | None = None) -> None:
        """Send an :class:`ErrorReply` to a device (e.g. a request the ROS side could not take). Thread-safe."""
        self._reply_error(topic or address.topic(Channel.request), ErrorCode(code), reason, payload,
                          address=address, task_id=task_id)

    def _reply_schema_violation(self, topic, address, payload, obj, exc: ValidationError, kind: str) -> None:
        issues = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err.get("loc", ()))
            issues.append(FieldIssue(field=encodable(loc), message=encodable(err.get("msg", ""))))
        summary = "; ".join(f"{i.field or '(payload)'}: {i.message}" for i in issues[:5])
        if len(issues) > 5:
            summary += f"; and {len(issues) - 5} more"
        task_id = obj.get("task_id") if isinstance(obj.get("task_id"), str) else None
        self._reply_error(topic, ErrorCode.schema_violation,
                          f"payload is not a valid {kind} ({len(issues)} problem(s)): {summary}",
                          payload, address=address, task_id=task_id, issues=issues[:50])

    def _reply_error(self, topic: str, code: ErrorCode, reason: str, payload: bytes, *,
                     address: DeviceAddress | None = None, task_id: str | None = None,
                     issues: list[FieldIssue] | None = None) -> None:
        with self._lock:
            self.stats["errors"] += 1
            self.error_counts[code.value] = self.error_counts.get(code.value, 0) + 1
        if address is not None:
            err_topic, device = address.topic(Channel.error), address.device
        else:
            err_topic = sibling_topic(topic, Channel.error)
            parts = topic.split("/")
            device = parts[3] if len(parts) == 6 else None
        log.warning("%s: %s on %s: %s", self.client_id, code.value, topic, reason)
        if err_topic is None:
            log.error("%s: cannot derive an error topic from %r; error not delivered", self.client_id, topic)
            return
        # echoed strings come from the device: escape what cannot be encoded, or the reply itself fails
        reply = ErrorReply(code=code, reason=encodable(reason)[:2048],
                           task_id=encodable(task_id)[:256] if task_id else None,
                           device_id=encodable(device)[:256] if device else None, topic=encodable(topic)[:1024],
                           payload_excerpt=payload_excerpt(payload), issues=issues or [])
        self._client.publish(err_topic, reply.to_json(), qos=1)

    # -- outgoing -------------------------------------------------------------------------------
    def address_of(self, device_id: str) -> DeviceAddress:
        with self._lock:
            addr = self._addresses.get(device_id)
        if addr is None:
            raise KeyError(f"no request or status seen from device {device_id!r}; pass its address")
        return addr

    def _publish_to_device(self, model, channel: Channel, address: DeviceAddress | None,
                           wait_s: float | None):
        address = address or self.address_of(model.device_id)
        if address.device != model.device_id:
            raise ValueError(f"{channel.value} for device {model.device_id!r} addressed to {address.device!r}")
        return self.publish_raw(address.topic(channel), model.to_json(), qos=1, wait_s=wait_s)

    def publish_decision(self, decision: Decision, address: DeviceAddress | None = None,
                         wait_s: float | None = None):
        """Send a decision to its device (QoS 1). Thread-safe."""
        return self._publish_to_device(decision, Channel.decision, address, wait_s)

    def publish_result(self, result: TaskResult, address: DeviceAddress | None = None,
                       wait_s: float | None = None):
        """Send a task's terminal state to its device (QoS 1). Thread-safe."""
        return self._publish_to_device(result, Channel.result, address, wait_s)


# ----------------------------------------------------------------------------------------------
@dataclass
class TaskHandle:
    """What a device waits on for one request."""

    task_id: str
    decision: Future = field(default_factory=Future)  # -> Decision, or RequestRefused
    result: Future = field(default_factory=Future)  # -> TaskResult, or RequestRefused
    request: TaskRequest | None = None
    # -> the ExecutionReport the device published for its own share (only with an executor and a
    # decision that gives the device work), or RequestRefused if the bridge refused it first
    execution: Future = field(default_factory=Future)
    # the bridge's ErrorReplies about that execution report (``overloaded`` and ``unavailable`` are retried)
    execution_errors: list[ErrorReply] = field(default_factory=list)
    execution_retries: int = 0


EXECUTION_RETRIES = 5  # resends of an execution report the bridge answered 'overloaded' or 'unavailable'
EXECUTION_BACKOFF_S = 0.2  # before the first resend; doubles with each


class DeviceClient(_Endpoint):
    """A camera-like device: publishes :class:`TaskRequest` s and awaits decisions and results.

    ``executor``: run the device's own share of a task. ``True`` uses the cost-model executor
    (:func:`mqtt_bridge.local_exec.default_executor`: sleeps ``W / f_m`` for the device's fraction,
    ``device_cpu_ghz`` or the middle of the preset's camera CPU range, times ``time_scale``); a
    callable ``executor(request, decision) -> ExecutionOutput`` (the contract of
    :mod:`opcua_devices.executor`) is used as is; ``None`` (default): the device runs nothing.
    With an executor, a decision with target ``device`` makes the device run all of the task and
    report it with part ``whole``, a decision with ``0 < offload_share < 1`` its ``1 - share`` with
    part ``local``, on its ``execution`` topic; the terminal result still comes on the result topic.
    An error reply about an execution report concerns that report only (``TaskHandle.execution_errors``);
    an ``overloaded`` or ``unavailable`` one makes the device send the report again after a short backoff.
    """

    def __init__(self, settings: MqttSettings, address: DeviceAddress, *, client_id: str | None = None,
                 persistent_session: bool = True, executor: Any = None, device_cpu_ghz: float | None = None,
                 preset: str = "factory", time_scale: float = 1.0):
        self.address = address
        self._runner = None
        if executor is not None and executor is not False:
            from .local_exec import LocalRunner, default_executor

            if executor is True:
                executor = default_executor(device_cpu_ghz, preset=preset, time_scale=time_scale)
            self._runner = LocalRunner(executor, self._report_execution, name=f"{address.device}-local-exec")
        self.executor = executor if self._runner is not None else None
        will = DeviceStatus(device_id=address.device, state="offline",
                            reason="connection lost (last will)").to_json()
        super().__init__(settings, client_id or f"aigc-dev-{address.device}",
                         persistent_session=persistent_session, will=(address.topic(Channel.status), will))
        self._handles: dict[str, TaskHandle] = {}
        self._hlock = threading.Lock()
        self.unmatched: queue.Queue = queue.Queue()  # decisions/results/errors for no pending task
        self.executions_reported = 0
        self._ids = itertools.count(1)
        # the reports published, kept past the task's result: an error reply about one may come after it
        self._reported: OrderedDict[str, tuple[TaskHandle, ExecutionReport]] = OrderedDict()
        self._retry_timers: dict[str, threading.Timer] = {}
        self._closing = False

    def start(self, wait: bool = True) -> None:
        self._closing = False
        super().start(wait)

    def _subscriptions(self) -> list[str]:
        return [self.address.topic(c) for c in (Channel.decision, Channel.result, Channel.error)]

    def _after_connect(self, session_present: bool) -> None:
        status = DeviceStatus(device_id=self.address.device, state="online", at=utc_now())
        self._client.publish(self.address.topic(Channel.status), status.to_json(), qos=1, retain=True)

    def _before_stop(self) -> None:
        if self.connected.is_set():
            status = DeviceStatus(device_id=self.address.device, state="offline", reason="clean shutdown",
                                  at=utc_now())
            try:
                self.publish_raw(self.address.topic(Channel.status), status.to_json(), retain=True, wait_s=2.0)
            except Exception as exc:
                log.warning("%s: could not publish offline status: %s", self.client_id, exc)

    def new_task_id(self) -> str:
        return f"{self.address.device}-{uuid.uuid4().hex[:8]}-{next(self._ids)}"

    def submit(self, request: TaskRequest) -> TaskHandle:
        """Publish a request (QoS 1) and return the futures of its decision and result."""
        if request.device_id != self.address.device:
            raise ValueError(f"request for device {request.device_id!r} sent by {self.address.device!r}")
        handle = TaskHandle(request.task_id, request=request)
        with self._hlock:
            self._handles[request.task_id] = handle
        self.publish_raw(self.address.topic(Channel.request), request.to_json(), qos=1)
        return handle

    def request(self, request: TaskRequest, timeout_s: float = 10.0) -> Decision:
        """Publish a request and wait for its decision; raises :class:`RequestRefused` on an error reply."""
        return self.submit(request).decision.result(timeout_s)

    def _handle_message(self, msg: mqtt.MQTTMessage) -> None:
        try:
            _, channel = parse_topic(msg.topic)
            model = {Channel.decision: Decision, Channel.result: TaskResult,
                     Channel.error: ErrorReply}[channel]
            item = model.model_validate_json(msg.payload)
        except (TopicError, KeyError, ValidationError) as exc:
            log.warning("%s: ignoring invalid payload on %s: %s", self.client_id, msg.topic, exc)
            return
        task_id = item.task_id
        if isinstance(item, ErrorReply) and item.topic == self.address.topic(Channel.execution):
            # about the device's own execution report, not a refusal of the request: the task goes on
            with self._hlock:
                sent = self._reported.get(task_id) if task_id else None
            if sent is None:
                self.unmatched.put(item)
            else:
                self._execution_refused(*sent, item)
            return
        with self._hlock:
            handle = self._handles.get(task_id) if task_id else None
            if handle is not None and (isinstance(item, (TaskResult, ErrorReply))):
                self._handles.pop(task_id, None)
        if handle is None:
            self.unmatched.put(item)
            return
        if isinstance(item, Decision):
            if not handle.decision.done():
                handle.decision.set_result(item)
                if self._runner is not None and handle.request is not None:
                    if not self._runner.submit(handle.request, item, skip=handle.result.done, context=handle):
                        handle.execution.cancel()
        elif isinstance(item, TaskResult):
            if not handle.decision.done():
                handle.decision.set_exception(RuntimeError(f"task {task_id} ended ({item.state.value}) "
                                                           f"without a decision"))
            if not handle.result.done():
                handle.result.set_result(item)
            if self._runner is None:
                handle.execution.cancel()
        else:
            exc = RequestRefused(item)
            for fut in (handle.decision, handle.result):
                if not fut.done():
                    fut.set_exception(exc)
            handle.execution.cancel()

    def _report_execution(self, handle: TaskHandle, request: TaskRequest, part: ExecutionPart, ok: bool | None,
                          reason: str | None, compute_s: float, energy_j: float, output_bits: int | None) -> None:
        """LocalRunner callback (its worker thread): publish the device's execution report (QoS 1)."""
        if ok is None:  # skipped: the task had already ended
            handle.execution.cancel()
            return
        report = ExecutionReport(task_id=request.task_id, device_id=self.address.device, part=part,
                                 state=ExecutionState.done if ok else ExecutionState.failed, reason=reason,
                                 compute_s=compute_s, energy_j=energy_j, output_bits=output_bits if ok else None,
                                 finished_at=utc_now())
        with self._hlock:  # before publishing: the bridge's error reply may come at once
            self._reported[request.task_id] = (handle, report)
            while len(self._reported) > 1000:
                self._reported.popitem(last=False)
        self.publish_raw(self.address.topic(Channel.execution), report.to_json(), qos=1)
        self.executions_reported += 1
        if not handle.execution.done():
            handle.execution.set_result(report)

    def _execution_refused(self, handle: TaskHandle, report: ExecutionReport, err: ErrorReply) -> None:
        handle.execution_errors.append(err)
        # overloaded: the bridge's queue was full; unavailable: its ROS side could not take the report (and
        # forgot it). Both ask for the report again; anything else about it would be refused again.
        if err.code in (ErrorCode.overloaded, ErrorCode.unavailable) and handle.execution_retries < EXECUTION_RETRIES:
            delay = 0.0 if self._closing else EXECUTION_BACKOFF_S * 2 ** handle.execution_retries
            handle.execution_retries += 1
            log.info("%s: the bridge answered %s; execution report of %s again in %.1f s", self.client_id,
                     err.code.value, report.task_id, delay)
            timer = threading.Timer(delay, self._resend_execution, args=(report,))
            timer.daemon = True
            with self._hlock:
                self._retry_timers[report.task_id] = timer
            timer.start()
            return
        log.warning("%s: the bridge refused the execution report of %s: %s: %s", self.client_id, report.task_id,
                    err.code.value, err.reason)
        if not handle.execution.done():
            handle.execution.set_exception(RequestRefused(err))

    def _resend_execution(self, report: ExecutionReport) -> None:
        with self._hlock:
            self._retry_timers.pop(report.task_id, None)
        self.publish_raw(self.address.topic(Channel.execution), report.to_json(), qos=1)

    def stop(self) -> None:
        """Clean shutdown while still connected: the local parts finish (or, past the runner's bound,
        are reported as not run) and execution reports waiting for a retry go out; then the offline
        status and the disconnect."""
        self._closing = True
        if self._runner is not None:
            self._runner.stop()
        with self._hlock:
            timers, self._retry_timers = list(self._retry_timers.values()), {}
        for timer in timers:
            timer.cancel()
            timer.function(*timer.args)
        super().stop()
