"""The policy contract an exported ONNX file carries in its metadata (DESIGN principle 2).

One ONNX ``metadata_props`` entry, key :data:`CONTRACT_KEY`, holds the contract as JSON (every key
is described in docs/runtime.md). :func:`check_contract` compares it with the simulator (the
scenario, its observation layout, its preset) and raises :class:`ContractError`, whose message is one
sentence naming the mismatch, when the runtime cannot meet it.

torch-free: numpy and the standard library only.
"""

from __future__ import annotations

import json
import math
from typing import Any

from policies.errors import UserError

CONTRACT_KEY = "aigc_offload.contract"
CONTRACT_FORMAT = "aigc-offload-policy"
CONTRACT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# Roles of graph inputs the runtime knows how to feed.
INPUT_ROLES = ("observation", "agent_index", "state", "noise")

# How a policy acts (contract ``action.modes``, the evaluated one in ``policy.mode``):
#   deterministic: noise inputs fed zeros, categorical heads take their argmax;
#   argmax:        noise inputs standard normal from the policy's rng, argmax;
#   sample:        noise inputs standard normal, categorical heads sampled with one uniform per row.
MODES = ("deterministic", "argmax", "sample")

# Components of a state key (contract ``state[].key``): the view's slot, its per-row source, or a
# per-row view feature (e.g. LAD-TS's task ``index``).
KEY_VIEW_ATTRIBUTES = ("slot", "source")

# Tensor dtypes the runtime feeds (contract ``dtype`` of inputs, state entries, tables, uniforms;
# policy._DTYPES maps them to numpy).
DTYPES = ("float32", "float64", "int64", "int32", "bool")


class ContractError(UserError):
    """A policy file whose contract this runtime or this simulator cannot meet."""


def layout_json(layout) -> list[dict[str, Any]]:
    """An ``OBS_LAYOUT`` (tuple of ObsField) as the contract's ``observation.fields``."""
    out, offset = [], 0
    for f in layout:
        out.append({"name": f.name, "unit": f.unit, "scale": float(f.scale), "width": int(f.width),
                    "offset": offset, "doc": f.doc})
        offset += int(f.width)
    return out


def parse_contract(meta: dict[str, str] | None, source: str) -> dict[str, Any]:
    """The contract dict from a file's metadata map; refuses missing, unreadable or unknown versions."""
    if not meta or CONTRACT_KEY not in meta:
        raise ContractError(f"'{source}' carries no policy contract (ONNX metadata key '{CONTRACT_KEY}' is missing); "
                            "export the policy with `aigc-offload export`")
    try:
        c = json.loads(meta[CONTRACT_KEY])
    except ValueError as exc:
        raise ContractError(f"'{source}' has a policy contract that is not valid JSON ({exc})") from None
    if not isinstance(c, dict):
        raise ContractError(f"'{source}' has a policy contract that is not a JSON object")
    version = c.get("contract_version")
    if version not in SUPPORTED_VERSIONS:
        raise ContractError(f"'{source}' uses policy contract version {version!r}; this runtime reads version(s) "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    if c.get("format") != CONTRACT_FORMAT:
        raise ContractError(f"'{source}' has contract format {c.get('format')!r}, not '{CONTRACT_FORMAT}'")
    for key in ("scenario", "preset_hash", "observation", "inputs", "outputs", "action", "state"):
        if key not in c:
            raise ContractError(f"'{source}' has a version {version} policy contract without its '{key}' entry")
    problem = _structure_problem(c)
    if problem:
        raise ContractError(f"'{source}' has a damaged policy contract: {problem}")
    return c


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_name(x: Any) -> bool:
    return isinstance(x, str) and bool(x)


def _dtype_problem(entry: dict[str, Any], where: str) -> str | None:
    if "dtype" in entry and entry["dtype"] not in DTYPES:
        return f"{where} has dtype {entry['dtype']!r}, which this runtime cannot feed (known: {', '.join(DTYPES)})"
    return None


def _structure_problem(c: dict[str, Any]) -> str | None:
    """What the runtime later reads, with the types it reads it as; the first problem, or None."""
    obs = c["observation"]
    if not isinstance(obs, dict):
        return "'observation' is not an object"
    if not _is_int(obs.get("dim")) or obs["dim"] <= 0:
        return f"observation.dim is {obs.get('dim')!r}, not a positive whole number"
    if not isinstance(obs.get("fields", []), list) or not all(isinstance(f, dict) for f in obs.get("fields", [])):
        return "observation.fields is not a list of objects"
    if not isinstance(c["inputs"], list) or not c["inputs"]:
        return "'inputs' is not a non-empty list of graph inputs"
    for i, inp in enumerate(c["inputs"]):
        if not isinstance(inp, dict) or not _is_name(inp.get("name")):
            return f"input {i} has no 'name' (a non-empty string)"
        shape = inp.get("shape", [])
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape[1:]):
            return f"input '{inp['name']}' has shape {shape!r}; expected a list of sizes after the batch dimension"
        if "count" in inp and not _is_int(inp["count"]):
            return f"input '{inp['name']}' has count {inp['count']!r}, not a whole number"
        problem = _dtype_problem(inp, f"input '{inp['name']}'")
        if problem:
            return problem
    action = c["action"]
    if not isinstance(action, dict):
        return "'action' is not an object"
    if not _is_name(action.get("output")):
        return "action.output (the graph output holding the action) is missing"
    if not isinstance(action.get("params", {}), dict):
        return "action.params is not an object"
    if action.get("targets") is not None and not isinstance(action["targets"], list):
        return "action.targets is not a list of target names"
    if not isinstance(action.get("modes") or [], (list, dict)):
        return "action.modes is not a list or an object of modes"
    sampling = action.get("sampling") or {}
    if not isinstance(sampling, dict) or not isinstance(sampling.get("uniform", {}), dict):
        return "action.sampling is not an object with an object 'uniform'"
    problem = _dtype_problem(sampling.get("uniform", {}), "action.sampling.uniform")
    if problem:
        return problem
    if not isinstance(c.get("policy", {}), dict):
        return "'policy' is not an object"
    if not isinstance(c["state"], list):
        return "'state' is not a list of state entries"
    for i, st in enumerate(c["state"]):
        if not isinstance(st, dict) or not _is_name(st.get("input")) or not _is_name(st.get("output")):
            return f"state entry {i} does not name its graph 'input' and 'output'"
        if not isinstance(st.get("shape"), list) or not all(_is_int(d) and d >= 0 for d in st["shape"]):
            return f"state '{st['input']}' has shape {st.get('shape')!r}, not a list of sizes"
        problem = _dtype_problem(st, f"state '{st['input']}'")
        if problem:
            return problem
        table = st.get("init_table")
        if table is None:
            continue
        if (not isinstance(table, dict) or not isinstance(table.get("shape"), list)
                or not all(_is_int(d) and d >= 0 for d in table["shape"])
                or not isinstance(table.get("index", []), list) or not isinstance(table.get("bounds") or {}, dict)):
            return f"state '{st['input']}' has an init_table without a list 'shape' of sizes, 'index' and 'bounds'"
        problem = _dtype_problem(table, f"the init_table of state '{st['input']}'")
        if problem:
            return problem
    return None


def _same_scale(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)


def check_layout(contract_fields: list[dict], sim_fields: list[dict], source: str) -> None:
    """Every observation field equal in order, name, unit, scale and width."""
    for i, (p, s) in enumerate(zip(contract_fields, sim_fields)):
        for key in ("name", "width", "unit"):
            if p.get(key) != s[key]:
                raise ContractError(
                    f"'{source}' expects observation field {i} to be '{p.get('name')}' ({key} {p.get(key)!r}), "
                    f"but the simulator's field {i} is '{s['name']}' ({key} {s[key]!r})")
        if not isinstance(p.get("scale"), (int, float)) or not _same_scale(p["scale"], s["scale"]):
            raise ContractError(f"'{source}' expects observation field '{s['name']}' scaled by {p.get('scale')!r}, "
                                f"but the simulator scales it by {s['scale']!r}")
    if len(contract_fields) != len(sim_fields):
        longer, which = (contract_fields, "policy") if len(contract_fields) > len(sim_fields) else (sim_fields, "simulator")
        extra = longer[min(len(contract_fields), len(sim_fields))]["name"]
        raise ContractError(f"'{source}' has {len(contract_fields)} observation fields and the simulator "
                            f"{len(sim_fields)}: the {which} has an extra field '{extra}'")


def check_contract(contract: dict[str, Any], sim, source: str, strict_preset: bool = True) -> None:
    """Refuse a contract the simulator ``sim`` cannot meet (scenario, layout, preset, sizes)."""
    from policies.config import preset_hash  # torch-free

    if contract["scenario"] != sim.name:
        raise ContractError(f"'{source}' is a policy for scenario '{contract['scenario']}', but the simulator runs "
                            f"scenario '{sim.name}'")
    obs = contract["observation"]
    check_layout(obs.get("fields", []), layout_json(sim.OBS_LAYOUT), source)
    if int(obs.get("dim", -1)) != sim.obs_dim():
        raise ContractError(f"'{source}' reads observations of width {obs.get('dim')}, the simulator builds "
                            f"width {sim.obs_dim()}")
    if strict_preset:
        have = preset_hash(sim.preset)
        if contract["preset_hash"] != have:
            raise ContractError(
                f"'{source}' was exported for preset '{contract.get('preset_name')}' with hash "
                f"{str(contract['preset_hash'])[:12]}, but the simulator's preset has hash {have[:12]} "
                "(load it with strict_preset=False / --no-strict-preset to accept a different preset of the same layout)")
    for inp in contract["inputs"]:
        if inp.get("role") not in INPUT_ROLES:
            raise ContractError(f"'{source}' has graph input '{inp.get('name')}' with role {inp.get('role')!r}, which "
                                f"this runtime cannot feed (known roles: {', '.join(INPUT_ROLES)})")
        if inp["role"] == "agent_index":
            devices = getattr(sim, inp.get("simulator_attribute", "M"), None)
            if devices is not None and int(inp.get("count", 0)) < devices:
                raise ContractError(f"'{source}' holds {inp.get('count')} per-device actors, but the simulator has "
                                    f"{devices} devices")
    for st in contract["state"]:
        check_state_entry(st, contract, sim, source)
    targets = getattr(sim, "target_names", None)
    want = contract["action"].get("targets")
    if targets is not None and want is not None and list(targets) != list(want):
        raise ContractError(f"'{source}' decides among targets {want}, but the simulator's targets are {list(targets)}")


def state_key(entry: dict[str, Any]) -> tuple[str, ...]:
    """A state entry's key components, e.g. ("source",) or ("slot", "source", "index")."""
    key = entry.get("key", "source")
    return (key,) if isinstance(key, str) else tuple(key)


def check_state_entry(st: dict[str, Any], contract: dict[str, Any], sim, source: str) -> None:
    """A state entry the runtime can keep: names a graph input and output, a known key, a constant or
    tabulated initial value whose table covers the simulator (``bounds``: key component -> preset field)."""
    for field in ("input", "output", "shape"):
        if field not in st:
            raise ContractError(f"'{source}' has a state entry without its '{field}'")
    if st["input"] not in {i.get("name") for i in contract["inputs"] if i.get("role") == "state"}:
        raise ContractError(f"'{source}' keeps state '{st['input']}', which is not a graph input with role 'state'")
    key = state_key(st)
    if not key or not all(isinstance(k, str) and k for k in key):
        raise ContractError(f"'{source}' keys state '{st['input']}' by {st.get('key')!r}; expected view attribute names")
    table = st.get("init_table")
    if table is None:
        if not isinstance(st.get("init_value", 0.0), (int, float)):
            raise ContractError(f"'{source}' gives state '{st['input']}' a non-numeric init_value")
        return
    if list(table.get("index", [])) != list(key):
        raise ContractError(f"'{source}' indexes the initial table of state '{st['input']}' by {table.get('index')}, "
                            f"but keys the state by {list(key)}")
    sizes = dict(zip(key, table.get("shape", [])[:len(key)]))
    preset = getattr(sim, "preset", None)
    for comp, field in (table.get("bounds") or {}).items():
        have = getattr(preset, field, None)
        if have is not None and comp in sizes and int(have) > int(sizes[comp]):
            raise ContractError(f"'{source}' keeps initial '{st['input']}' values for {comp} 0..{int(sizes[comp]) - 1} "
                                f"({field}={sizes[comp]} when trained), but the simulator has {field}={have}")
