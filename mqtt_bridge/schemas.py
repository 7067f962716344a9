"""Payload schemas of the MQTT side: pydantic v2 models, one per message kind.

Every payload is a UTF-8 JSON object. Units are in the field names (``_s`` seconds, ``_bits``
bits) or in the field descriptions. Unknown fields are refused (``extra="forbid"``), so a typo in a
device's payload becomes a ``schema_violation`` error reply instead of a silently ignored field.

The JSON Schemas in ``mqtt_bridge/schema/`` are generated from these models::

    python -m mqtt_bridge.schemas --write [mqtt_bridge/schema]
    python -m mqtt_bridge.schemas --check [mqtt_bridge/schema]   # exit 1 if stale
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

SCHEMA_VERSION = 1
SCHEMA_DIR = Path(__file__).with_name("schema")

#: Identifier of a device, an edge server, a bridge: also an MQTT topic level, hence the safe set.
SAFE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
#: Identifier of a task or a model: may also contain '.' and ':' (never a topic level).
TOKEN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"

DeviceId = Annotated[
    str,
    StringConstraints(pattern=SAFE_ID_PATTERN),
    Field(description="device identifier: 1-64 of [A-Za-z0-9_-], starting with a letter or digit; "
          "equal to the <device> level of the topic"),
]
TaskId = Annotated[
    str,
    StringConstraints(pattern=TOKEN_PATTERN),
    Field(description="task identifier chosen by the device, unique per device: 1-128 of "
          "[A-Za-z0-9_.:-]; kept on every hop"),
]
ModelName = Annotated[
    str,
    StringConstraints(pattern=TOKEN_PATTERN),
    Field(description="name of the generative model the task needs, e.g. 'sd-defect-v2'"),
]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    schema_version: Literal[1] = Field(
        SCHEMA_VERSION, description="payload schema version; this document describes version 1"
    )

    def to_json(self) -> bytes:
        """The MQTT payload: compact UTF-8 JSON, optional fields that are unset left out."""
        return self.model_dump_json(exclude_none=True).encode()


class TaskKind(StrEnum):
    defect_image = "defect_image"  # synthetic defect image (diffusion model; work ~ denoising steps)
    report = "report"  # production report text (language model; work ~ output tokens)


class Target(StrEnum):
    device = "device"  # run on the requesting device itself
    edge = "edge"  # run on an edge server (named in edge_server)
    cloud = "cloud"  # run in the cloud


class TerminalState(StrEnum):
    done = "done"
    rejected = "rejected"
    failed = "failed"
    deadline_missed = "deadline_missed"


class ErrorCode(StrEnum):
    malformed_json = "malformed_json"  # payload is not a UTF-8 JSON object
    schema_violation = "schema_violation"  # JSON, but not a valid payload of the topic's kind
    unknown_model = "unknown_model"  # model_name is not one the deployment serves
    duplicate_task = "duplicate_task"  # the device already sent a different request with this task_id
    device_mismatch = "device_mismatch"  # payload device_id differs from the topic's <device> level
    invalid_topic = "invalid_topic"  # topic does not follow the scheme (bad characters, levels)
    payload_too_large = "payload_too_large"  # payload larger than the bridge accepts
    expired = "expired"  # deadline already over when the request arrived
    overloaded = "overloaded"  # bridge hand-off queue full; retry later
    unavailable = "unavailable"  # the bridge stopped or its ROS side could not take the payload; send it again
    internal_error = "internal_error"  # the bridge failed on this payload; a bug, please report


class TaskRequest(_Payload):
    """A device asks for a generated artefact. Topic: ``.../<device>/aigc/request``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="TaskRequest",
        json_schema_extra={
            # The kind-dependent requirement, also in the JSON Schema (pydantic enforces it below).
            "allOf": [
                {"if": {"properties": {"task_kind": {"const": "defect_image"}}},
                 "then": {"required": ["denoising_steps"], "not": {"required": ["output_tokens"]}}},
                {"if": {"properties": {"task_kind": {"const": "report"}}},
                 "then": {"required": ["output_tokens"], "not": {"required": ["denoising_steps"]}}},
            ]
        },
    )

    task_id: TaskId
    device_id: DeviceId
    task_kind: TaskKind = Field(description="defect_image (diffusion) or report (text)")
    model_name: ModelName
    input_bits: int = Field(ge=0, le=10**12, description="size of the task's input data to upload, bits")
    denoising_steps: int | None = Field(
        None, ge=1, le=1000, description="defect_image only: number of denoising steps z (quality)"
    )
    output_tokens: int | None = Field(
        None, ge=1, le=100_000, description="report only: number of tokens to generate"
    )
    deadline_s: float = Field(
        gt=0, le=3600, description="relative deadline, seconds after created_at"
    )
    created_at: AwareDatetime = Field(
        description="when the device created the task, ISO 8601 with a UTC offset"
    )
    prompt: str | None = Field(None, max_length=4096, description="optional text prompt, at most 4096 characters")

    @model_validator(mode="after")
    def _work_matches_kind(self) -> TaskRequest:
        if self.task_kind == TaskKind.defect_image:
            if self.denoising_steps is None:
                raise ValueError("task_kind defect_image needs denoising_steps")
            if self.output_tokens is not None:
                raise ValueError("task_kind defect_image takes denoising_steps, not output_tokens")
        else:
            if self.output_tokens is None:
                raise ValueError("task_kind report needs output_tokens")
            if self.denoising_steps is not None:
                raise ValueError("task_kind report takes output_tokens, not denoising_steps")
        return self

    def deadline_at(self) -> datetime:
        return self.created_at + timedelta(seconds=self.deadline_s)


class Decision(_Payload):
    """Where a task runs. Topic: ``.../<device>/aigc/decision``."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Decision")

    task_id: TaskId
    device_id: DeviceId
    target: Target = Field(description="device, edge or cloud")
    edge_server: str | None = Field(
        None, pattern=SAFE_ID_PATTERN, description="edge server id; required when target is edge"
    )
    offload_share: float = Field(
        1.0, ge=0.0, le=1.0,
        description="fraction of the task's work sent to the target, 0..1 (1 = all of it; MATO's eta)",
    )
    download_model: bool = Field(
        False, description="the target fetches model_name from the cloud before running (MATO's beta)"
    )
    model_name: ModelName
    policy: str = Field(min_length=1, max_length=128, description="policy that decided: name and version")
    expected_latency_s: float | None = Field(
        None, ge=0, description="the gateway's estimate of the end-to-end latency, seconds"
    )
    decided_at: AwareDatetime = Field(description="when the gateway decided, ISO 8601 with a UTC offset")

    @model_validator(mode="after")
    def _edge_named(self) -> Decision:
        if self.target == Target.edge and self.edge_server is None:
            raise ValueError("target edge needs edge_server")
        if self.target != Target.edge and self.edge_server is not None:
            raise ValueError("edge_server is only allowed with target edge")
        return self


class TaskResult(_Payload):
    """The task's one terminal state. Topic: ``.../<device>/aigc/result``."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="TaskResult")

    task_id: TaskId
    device_id: DeviceId
    state: TerminalState = Field(description="done, rejected, failed or deadline_missed")
    reason: str | None = Field(
        None, max_length=1024, description="why, as a sentence; required unless state is done"
    )
    executed_on: str | None = Field(
        None, max_length=128, description="where it ran: 'device', 'edge:<id>' or 'cloud'"
    )
    latency_s: float | None = Field(None, ge=0, description="end-to-end latency from created_at, seconds")
    output_bits: int | None = Field(None, ge=0, description="size of the generated output, bits")
    output_uri: str | None = Field(None, max_length=2048, description="where the output can be fetched")
    finished_at: AwareDatetime = Field(description="when the task reached this state, ISO 8601")

    @model_validator(mode="after")
    def _reason_unless_done(self) -> TaskResult:
        if self.state != TerminalState.done and not self.reason:
            raise ValueError(f"state {self.state.value} needs a reason")
        return self


class ExecutionPart(StrEnum):
    whole = "whole"  # the decision's target was the device: it ran all of the task
    local = "local"  # a split task (0 < offload_share < 1): the device ran its (1 - offload_share)


class ExecutionState(StrEnum):
    done = "done"
    failed = "failed"


class ExecutionReport(_Payload):
    """The device ran its share of a task. Topic: ``.../<device>/aigc/execution`` (device -> bridge).

    Not the task's terminal state: the gateway combines it with the remote part (if any) and the
    device still gets exactly one :class:`TaskResult` on its result topic."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ExecutionReport")

    task_id: TaskId
    device_id: DeviceId
    part: ExecutionPart = Field(
        description="whole (decision target device) or local (the device's 1 - offload_share of a split task)")
    state: ExecutionState = Field(description="done or failed")
    reason: str | None = Field(None, max_length=1024, description="why it failed, as a sentence; required when failed")
    compute_s: float = Field(ge=0, le=86_400, description="time the device spent computing its part, seconds")
    energy_j: float = Field(0.0, ge=0, le=1e9, description="energy the device spent computing its part, joules")
    output_bits: int | None = Field(None, ge=0, description="size of the output the device produced, bits")
    finished_at: AwareDatetime = Field(description="when the device finished its part, ISO 8601 with a UTC offset")

    @model_validator(mode="after")
    def _reason_when_failed(self) -> ExecutionReport:
        if self.state == ExecutionState.failed and not self.reason:
            raise ValueError("state failed needs a reason")
        return self


class FieldIssue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(description="dotted path of the offending field ('' for the whole payload)")
    message: str = Field(description="what is wrong with it")


class ErrorReply(_Payload):
    """The bridge refused a payload. Topic: ``.../<device>/aigc/error``."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="ErrorReply")

    code: ErrorCode = Field(description="machine-readable error class")
    reason: str = Field(max_length=2048, description="what is wrong, as a sentence")
    task_id: str | None = Field(
        None, max_length=256, description="task_id of the refused request when it could be read"
    )
    device_id: str | None = Field(None, max_length=256, description="device the payload came from (topic level)")
    topic: str = Field(max_length=1024, description="topic the refused payload was published on")
    payload_excerpt: str = Field(
        max_length=512, description="first bytes of the refused payload, UTF-8 with replacement characters"
    )
    issues: list[FieldIssue] = Field(default_factory=list, description="per-field problems (schema_violation)")
    at: AwareDatetime = Field(default_factory=utc_now, description="when the bridge refused it, ISO 8601")


class DeviceStatus(_Payload):
    """Presence of a device or a bridge, retained. Topic: ``.../<device>/aigc/status`` (devices),
    ``<enterprise>/aigc/bridge/<bridge>/status`` (bridges)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="DeviceStatus")

    device_id: DeviceId
    state: Literal["online", "offline"] = Field(description="online, or offline (also the last will)")
    role: Literal["device", "bridge"] = Field("device", description="who is reporting")
    reason: str | None = Field(
        None, max_length=256, description="why offline: 'clean shutdown' or 'connection lost (last will)'"
    )
    at: AwareDatetime | None = Field(
        None, description="when the state was set, ISO 8601; absent in a last will (the broker sends it later)"
    )


#: file name -> model of the published JSON Schemas.
MODELS: dict[str, type[_Payload]] = {
    "task_request.json": TaskRequest,
    "decision.json": Decision,
    "task_result.json": TaskResult,
    "error_reply.json": ErrorReply,
    "device_status.json": DeviceStatus,
    "execution_report.json": ExecutionReport,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """file name -> JSON Schema (draft 2020-12) of each payload model."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://aigc-offload.example/mqtt/v{SCHEMA_VERSION}/{name}",
            **schema,
        }
        out[name] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        paths.append(path)
    return paths


def stale_schemas(directory: str | Path) -> list[str]:
    """Names of the schema files in ``directory`` that are missing or differ from the models."""
    directory = Path(directory)
    stale = []
    for name, schema in json_schemas().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(schema):
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mqtt_bridge.schemas", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="DIR", nargs="?", const=str(SCHEMA_DIR),
                       help=f"write the JSON Schemas into DIR (default {SCHEMA_DIR})")
    group.add_argument("--check", metavar="DIR", nargs="?", const=str(SCHEMA_DIR),
                       help="exit 1 if DIR's schemas differ from the models (default: the package's schema/)")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_schemas(args.write):
            print(path)
        return 0
    stale = stale_schemas(args.check)
    if stale:
        print(f"stale JSON Schemas in {args.check}: {', '.join(stale)}; "
              f"run python -m mqtt_bridge.schemas --write {args.check}", file=sys.stderr)
        return 1
    print(f"JSON Schemas in {args.check} are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
