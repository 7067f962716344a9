"""Scenario registry: name -> simulator class (modules are imported on first use)."""

from __future__ import annotations

import importlib
import importlib.util

from policies.errors import UnknownNameError

# scenario name -> "module:Class"
SCENARIOS: dict[str, str] = {
    "mato": "policies.scenarios.mato:MatoSimulator",
    "gmel": "policies.scenarios.gmel:GmelSimulator",
    "aiecof": "policies.scenarios.aiecof:AiecofSimulator",
    "ladts": "policies.scenarios.ladts:LadtsSimulator",
    "edgeaigc": "policies.scenarios.edgeaigc:EdgeAigcSimulator",
    "factory": "policies.scenarios.factory:FactorySimulator",
}


def available_scenarios() -> list[str]:
    """Scenario names whose module is present in this installation."""
    out = []
    for name, target in SCENARIOS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def scenario_class(name: str):
    if name not in SCENARIOS:
        raise UnknownNameError(f"unknown scenario '{name}'; known scenarios: {', '.join(available_scenarios())}")
    module, cls = SCENARIOS[name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise UnknownNameError(f"scenario '{name}' is not available in this installation") from None
        raise
    return getattr(mod, cls)


def make_simulator(preset_name_or_path, overrides=None, expect: str | None = None):
    """Load a preset and build its scenario's simulator; ``expect`` names the scenario it must be."""
    from policies.config import load_preset
    from policies.errors import PresetError

    preset = load_preset(preset_name_or_path, overrides or None)
    if expect is not None and preset.scenario != expect:
        raise PresetError(f"preset '{preset_name_or_path}' is for scenario '{preset.scenario}', not '{expect}'")
    return scenario_class(preset.scenario)(preset)
