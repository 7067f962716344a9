"""Presets: a paper's (or a deployment's) parameters as YAML validated by pydantic.

A preset file names its scenario (``scenario: ladts``); the scenario module owns the pydantic model
that validates the rest. Presets are data, not code (DESIGN principle 6): sweeps in experiments
change a preset with overrides, never the simulator.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policies.errors import PresetError, UnknownNameError

PRESET_DIR = Path(__file__).resolve().parent / "presets"


class PresetBase(BaseModel):
    """Fields every preset has. Scenario presets subclass this."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: str = Field(description="scenario (simulator) this preset configures")
    description: str = Field(default="", description="one line: what this preset is")
    slot_s: float = Field(gt=0, description="length of one time slot, seconds")
    slots_per_episode: int = Field(gt=0, description="slots in one episode")

    def key_parameters(self) -> dict[str, object]:
        """The few numbers `aigc-offload scenarios` shows; scenario presets add theirs."""
        return {"slots": self.slots_per_episode, "slot_s": self.slot_s}


def list_presets() -> list[str]:
    """Names of the presets shipped with the package (file stems in ``policies/presets``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise UnknownNameError(
                f"unknown scenario or preset '{name_or_path}'; known presets: {', '.join(list_presets())}"
            )
    if not path.exists():
        raise PresetError(f"preset file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise PresetError(f"preset '{path}' is not valid YAML{line}") from exc
    if not isinstance(data, dict):
        raise PresetError(f"preset '{path}' must be a YAML mapping of parameter names to values")
    return data, str(path)


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted keys (``edge.cpu_hz``) replaced."""
    out = json.loads(json.dumps(data))
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise PresetError(f"override '{key}': '{part}' is not a section of the preset")
            node = node[part]
        node[parts[-1]] = value
    return out


def format_validation_error(source: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    return f"preset '{source}' is invalid: field '{loc}': {first['msg']}{more}"


def load_preset(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> PresetBase:
    """Load and validate a preset by name (``ladts``) or path, with optional dotted overrides."""
    from policies.scenarios import scenario_class  # late import: scenarios import this module

    data, source = _read_yaml(name_or_path)
    if overrides:
        data = _apply_overrides(data, overrides)
    name = data.get("scenario")
    if not isinstance(name, str):
        raise PresetError(f"preset '{source}' must name its scenario (a 'scenario:' line)")
    cls = scenario_class(name)
    try:
        return cls.Preset.model_validate(data)
    except ValidationError as exc:
        raise PresetError(format_validation_error(source, exc)) from None


def preset_hash(preset: BaseModel) -> str:
    """sha256 of the preset's canonical JSON: names a preset exactly in traces and policy files."""
    canonical = json.dumps(preset.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
