"""The factory deployment: which nodes run, with which parameters, from one YAML file.

One source for ``launch/factory.launch.py`` (standard ``ros2 launch``) and for
``aigc-offload factory`` (the process runner used where ``ros2 launch`` is not installed): both
call :func:`node_specs` on the same :class:`Deployment`, so the node list and the parameters
cannot drift apart (a test runs the launch file against recording stand-ins of ``launch_ros``
and compares).

The plant itself (device CPUs and positions, edge servers, model catalog, deadlines) comes from
a factory *preset* of the simulator (``policies/presets/factory*.yaml``) and a seed: the devices
are drawn exactly as the simulator draws an episode's devices, so a policy trained on that
preset sees the same kind of plant, and the simulator can predict a run of the deployment.

Deployment file (``config/factory.yaml``)::

    preset: factory            # simulator preset describing the plant
    seed: 0                    # device draw (CPUs, positions)
    num_edge_servers: null     # null = all of the preset's; fewer takes the first ones
    gateway:
      policy: factory_distill_s2.onnx   # heuristic name, or an exported .onnx policy
      fallback_policy: greedy  # heuristic used when `policy` cannot be loaded ("" = refuse)
    edge_server:
      execution: paced         # paced: hold each task for its modeled compute time W / f_n
      status_period_s: 0.1
    cloud:
      catalog_dir: ""          # model catalog (catalog.yaml + files); "" = the shipped zoo
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policies.errors import UserError

PACKAGE = "aigc_offload"
REQUEST_TOPIC = "/aigc/task_request"  # TaskRequest, ingress -> gateway
DECISION_TOPIC = "/aigc/decision"  # Decision, gateway -> ingress (reply to the device)
EXECUTION_RESULT_TOPIC = "/aigc/execution_result"  # TaskResult, executors -> gateway
RESULT_TOPIC = "/aigc/task_result"  # TaskResult, gateway -> ingress: exactly one terminal per task
STATUS_TOPIC = "/aigc/edge_status"  # EdgeServerStatus, edge servers -> gateway and peers
# History kept on the task topics (reliable, keep-last): a gateway lagging by 4 s at 500 requests/s
# still gets every request (depth 100 lost requests under load in bench e2e).
TASK_QUEUE_DEPTH = 2000


def task_stream_qos():
    """QoS of the per-task streams (requests, decisions, terminal results): reliable, keep-last
    ``TASK_QUEUE_DEPTH``, transient-local. Every publisher of ``REQUEST_TOPIC``, ``DECISION_TOPIC`` and
    ``RESULT_TOPIC`` offers it, so an observer that joins late (the factory job's monitor, an MCAP
    recorder, ``ros2 topic echo --qos-durability transient_local``) and subscribes with it receives the
    tasks published before discovery matched it; the gateway and the ingresses subscribe volatile
    and never get old tasks replayed after a restart."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=TASK_QUEUE_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
CLOUD_NODE = "cloud_model_server"
GATEWAY_NODE = "edge_gateway"


class DeploymentError(UserError, ValueError):
    """The deployment file is missing, not YAML, or violates the schema, or asks for a plant the
    preset does not have; ``str()`` says where. A UserError: ``aigc-offload`` prints it and exits 2."""


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: str = Field("factory_distill_s2.onnx",
                        description="heuristic name or an exported .onnx policy (relative: cwd, then policies/trained/)")
    fallback_policy: str = Field("greedy", description="heuristic used if `policy` cannot be loaded; '' = refuse to activate")
    result_grace_s: float = Field(0.5, ge=0, description="wait past a task's deadline before declaring it missed, s")
    submit_timeout_s: float = Field(1.0, gt=0, description="how long a hand-off to a server may wait for its "
                                    "acknowledgement, s; it is sent once more before the task fails")
    diagnostics_period_s: float = Field(1.0, gt=0, description="diagnostics publication period, s")


class EdgeServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    execution: Literal["paced", "generative"] = Field(
        "paced", description="paced: hold each task for its modeled compute W/f_n; generative: also run the real model")
    status_period_s: float = Field(0.1, gt=0, description="status publication period, s")
    cache_dir: str = Field("", description="model cache directory root ('' = a temporary directory per server)")
    download_chunk_bytes: int = Field(1 << 20, gt=0, description="bytes per FetchModelChunk request")


class CloudConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    catalog_dir: str = Field("", description="model catalog directory; '' = the shipped generative model zoo")
    max_chunk_bytes: int = Field(1 << 20, gt=0, description="largest chunk per reply, bytes")


class MqttConfig(BaseModel):
    """The MQTT side (cameras): the broker the bridge node connects to."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="run the mqtt_bridge node")
    host: str = Field("localhost", description="broker host")
    port: int = Field(8883, ge=1, le=65535, description="broker TLS port")
    ca_file: str = Field("", description="CA of the broker's certificate ('' = the system store)")
    username: str = Field("bridge", description="the bridge's broker account")
    password_file: str = Field("", description="file holding that account's password")
    enterprise: str = Field("factory", description="first level of the unified namespace")
    site: str = Field("plant1", description="site level of the unified namespace")


class OpcuaConfig(BaseModel):
    """The OPC UA side (controllers): the device servers the ingress node serves."""

    model_config = ConfigDict(extra="forbid")
    endpoints: list[str] = Field(default_factory=list, description="opc.tcp:// URLs; empty = no OPC UA ingress")
    pki_dir: str = Field("", description="lab PKI directory (python -m opcua_devices.pki)")
    client_name: str = Field("gateway", description="the ingress's certificate and user name in the PKI")
    password_file: str = Field("", description="'' = <pki_dir>/clients/<client_name>/password")


class Deployment(BaseModel):
    """A factory deployment: plant preset + seed, and the settings of each node kind."""

    model_config = ConfigDict(extra="forbid")
    preset: str = Field("factory", description="simulator preset (name or YAML path) describing the plant")
    seed: int = Field(0, ge=0, description="seed of the device draw (CPUs, positions)")
    num_edge_servers: int | None = Field(None, ge=1, description="edge servers to run (first ones of the preset)")
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    edge_server: EdgeServerConfig = Field(default_factory=EdgeServerConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    opcua: OpcuaConfig = Field(default_factory=OpcuaConfig)
    execution_nice: int = Field(
        10, ge=0, le=19,
        description="CPU niceness of the execution tier (edge servers, cloud) when the whole graph shares one "
                    "machine: the decision path (gateway, bridge, ingress) keeps the CPU when it is saturated; "
                    "0 = equal shares")


def load_deployment(path: str | Path, overrides: dict[str, Any] | None = None) -> Deployment:
    """Read and validate a deployment file; ``overrides`` are top-level or dotted keys."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise DeploymentError(f"deployment file '{path}' does not exist") from None
    except OSError as exc:
        raise DeploymentError(f"deployment file '{path}' cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DeploymentError(f"deployment file '{path}' is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except yaml.YAMLError as exc:
        raise DeploymentError(f"deployment file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DeploymentError(f"deployment file '{path}' must be a mapping")
    for key, value in (overrides or {}).items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DeploymentError(f"override '{key}': '{part}' is not a section of the deployment")
        node[parts[-1]] = value
    try:
        return Deployment.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise DeploymentError(f"deployment file '{path}': {where}: {first['msg']}") from None


# --------------------------------------------------------------------------------------------
# The plant drawn from the preset
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceSpec:
    device_id: str
    index: int  # device index in the preset's order (controllers first)
    kind: Literal["controller", "camera"]
    line: int
    cpu_ghz: float
    xy_m: tuple[float, float]
    uplink_mbps: tuple[float, ...]  # nominal Shannon rate to each edge server (no fading), Mbit/s


@dataclass(frozen=True)
class EdgeSpec:
    server_id: str
    index: int
    cpu_ghz: float
    storage_mb: float
    xy_m: tuple[float, float]
    initial_models: tuple[str, ...]


@dataclass(frozen=True)
class Plant:
    preset_name: str
    devices: tuple[DeviceSpec, ...]
    edges: tuple[EdgeSpec, ...]
    models: tuple[str, ...]


def device_id(kind: str, number: int) -> str:
    """Device ids are one safe topic level (MQTT unified namespace, OPC UA browse name): plc01, cam03."""
    return f"{'plc' if kind == 'controller' else 'cam'}{number:02d}"


def draw_plant(dep: Deployment) -> Plant:
    """Devices and servers as the simulator draws them for episode 0 of ``dep.seed``."""
    from policies.scenarios import make_simulator
    from policies.workload import episode_rng

    sim = make_simulator(dep.preset, expect="factory")
    p = sim.preset
    n_edges = sim.N if dep.num_edge_servers is None else dep.num_edge_servers
    if n_edges > sim.N:
        raise DeploymentError(f"num_edge_servers {n_edges} exceeds the preset's {sim.N} edge servers")
    wl = sim.generate_workload(episode_rng(dep.seed, 0, 0), 0)
    sim.reset(wl)
    cpu = np.asarray(wl.params["device_cpu_ghz"], dtype=float)
    xy = np.asarray(wl.params["device_xy_m"], dtype=float)
    devices = []
    for m in range(sim.M):
        kind = "controller" if m < p.num_controllers else "camera"
        line = m % p.num_lines
        num = m + 1 if kind == "controller" else m - p.num_controllers + 1
        devices.append(DeviceSpec(device_id(kind, num), m, kind, line, float(cpu[m]),
                                  (float(xy[m, 0]), float(xy[m, 1])),
                                  tuple(float(r) / 1e6 for r in sim.rate_nominal[m, :n_edges])))
    names = [mm.name for mm in p.models]
    edges = tuple(EdgeSpec(f"edge{n}", n, float(p.edge_cpu_ghz[n]), float(p.edge_storage_mb[n]),
                           (float(p.edge_xy_m[n][0]), float(p.edge_xy_m[n][1])),
                           tuple(names[k] for k in np.flatnonzero(sim.cache[n])))
                  for n in range(n_edges))
    return Plant(dep.preset, tuple(devices), edges, tuple(names))


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph: what ``launch_ros.actions.Node`` needs, and what the runner starts."""

    executable: str  # console script of the package (= module aigc_offload.<executable>)
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    nice: int = 0  # CPU niceness of the process (Deployment.execution_nice for the execution tier)

    @property
    def module(self) -> str:
        return f"{PACKAGE}.{self.executable}"


def default_catalog_dir() -> str:
    """The shipped generative model zoo (genmodels/zoo), when it is installed."""
    try:
        import genmodels  # noqa: PLC0415 - optional

        zoo = Path(genmodels.__file__).resolve().parent / "zoo"
        return str(zoo) if (zoo / "catalog.yaml").is_file() else ""
    except ImportError:
        return ""


def node_specs(dep: Deployment, plant: Plant | None = None) -> list[NodeSpec]:
    """The node graph of a deployment: the cloud model server, one edge server per server of the
    plant, and the gateway. Parameters are plain values (ROS parameter types)."""
    plant = plant or draw_plant(dep)
    catalog = dep.cloud.catalog_dir or default_catalog_dir()
    specs = [NodeSpec("cloud_model_server", CLOUD_NODE, {
        "catalog_dir": catalog, "max_chunk_bytes": dep.cloud.max_chunk_bytes, "autostart": True},
        nice=dep.execution_nice)]
    peers = [e.server_id for e in plant.edges]
    for e in plant.edges:
        specs.append(NodeSpec("edge_server", e.server_id, {
            "server_id": e.server_id, "server_index": e.index, "preset": dep.preset, "cpu_ghz": e.cpu_ghz,
            "storage_mb": e.storage_mb, "initial_models": list(e.initial_models) or [""],
            "peers": peers, "execution": dep.edge_server.execution,
            "status_period_s": dep.edge_server.status_period_s, "cache_dir": dep.edge_server.cache_dir,
            "download_chunk_bytes": dep.edge_server.download_chunk_bytes, "autostart": True},
            nice=dep.execution_nice))
    specs.append(NodeSpec("edge_gateway", GATEWAY_NODE, {
        "preset": dep.preset, "seed": dep.seed, "num_edge_servers": len(plant.edges),
        "policy": dep.gateway.policy, "fallback_policy": dep.gateway.fallback_policy,
        "result_grace_s": dep.gateway.result_grace_s, "submit_timeout_s": dep.gateway.submit_timeout_s,
        "diagnostics_period_s": dep.gateway.diagnostics_period_s, "autostart": True}))
    if dep.mqtt.enabled:
        m = dep.mqtt
        specs.append(NodeSpec("mqtt_bridge_node", "mqtt_bridge", {
            "host": m.host, "port": m.port, "tls": True, "ca_file": m.ca_file, "username": m.username,
            "password_file": m.password_file, "enterprise": m.enterprise, "site": m.site, "preset": dep.preset,
            "device_kind": "camera", "autostart": True}))
    if dep.opcua.endpoints:
        o = dep.opcua
        specs.append(NodeSpec("opcua_ingress_node", "opcua_ingress", {
            "endpoints": list(o.endpoints), "pki_dir": o.pki_dir, "client_name": o.client_name,
            "password_file": o.password_file, "autostart": True}))
    return specs


def params_file_text(specs: list[NodeSpec]) -> str:
    """A ROS 2 parameters file for the given nodes (``--ros-args --params-file``)."""
    class NoAliases(yaml.SafeDumper):  # rcl's params parser refuses YAML anchors/aliases
        def ignore_aliases(self, data):
            return True

    return yaml.dump({s.name: {"ros__parameters": s.parameters} for s in specs}, Dumper=NoAliases, sort_keys=False)
