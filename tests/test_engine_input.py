"""The decision engine's input checks, shared by exported and heuristic policies: large inputs decide
(one task and a batch alike), NaN / infinity, indices beyond the plant and unphysical entries are refused
with a typed error and a sentence, and a damaged policy contract is a ContractError. Fast, no ROS, no torch."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from policies.runtime import ContractError, DecisionEngine, ObservationError, OnnxPolicy, read_contract
from policies.runtime.contract import CONTRACT_KEY, parse_contract
from policies.scenarios import make_simulator
from policies.scenarios.factory import LiveStateError

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "policies" / "trained"
MADDPG = TRAINED / "factory_maddpg_s2.onnx"
DISTILL = TRAINED / "factory_distill_s2.onnx"

TASK = {"device": 0, "kind": "report", "model": "report-m", "units": 200, "input_mbit": 3.0, "output_mbit": 0.5,
        "deadline_s": 2.0}
STATE = {"device_cpu_ghz": 2.0, "uplink_mbps": [20, 30, 10, 5], "edge_backlog_s": [0.1, 0.0, 0.3, 0.0],
         "edge_cpu_ghz": [20, 20, 30, 30], "edge_cached_models": [["report-m"], [], ["defect-s"], []]}


@pytest.fixture(scope="module")
def engines():
    return {"greedy": DecisionEngine.load("greedy"), "maddpg": DecisionEngine.load(str(MADDPG)),
            "distill": DecisionEngine.load(str(DISTILL))}


# -- 1: large inputs decide, one task as in a batch ------------------------------------------------------
@pytest.mark.parametrize("task, state", [
    ({**TASK, "deadline_s": 1000.0}, STATE),
    (TASK, {**STATE, "edge_backlog_s": [1000.0] * 4}),
    ({**TASK, "input_mbit": 1e6}, STATE),
])
def test_large_inputs_decide_one_task_as_in_a_batch(engines, task, state):
    eng = engines["maddpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither an OverflowError nor numpy's overflow warning
        one = eng.decide(task, state)
        many = eng.decide_many([task, task], [state, state])
    for d in many:
        assert (d.target, d.offload_share, d.download_model) == (one.target, one.offload_share, one.download_model)


def test_mato_decoder_saturates_instead_of_overflowing():
    from policies.runtime.decoders import decode_mato_maddpg
    from policies.scenarios.base import OffloadView

    params = {"servers": 2, "eta_stretch": 1.1, "download_threshold": 0.5}
    out = np.array([[0.0, 1.0, -1000.0, -1000.0], [0.0, 1.0, 1000.0, 1000.0], [1.0, 0.0, -800.0, 900.0]], np.float32)
    allowed = np.ones((3, 3), bool)
    view = OffloadView(slot=0, target_names=("local", "e0", "e1"), source=np.arange(3), allowed=allowed,
                       local_target=0, has_share=True, has_download=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = decode_mato_maddpg(out, view, params)
        rows = [decode_mato_maddpg(out[i:i + 1], OffloadView(slot=0, target_names=view.target_names,
                                                             source=view.source[i:i + 1], allowed=allowed[i:i + 1],
                                                             local_target=0, has_share=True, has_download=True),
                                   params) for i in range(3)]
    assert batch.target.tolist() == [0, 2, 0] and batch.download.tolist() == [False, True, True]
    for i, one in enumerate(rows):
        assert one.target[0] == batch.target[i] and one.share[0] == batch.share[i]
        assert one.download[0] == batch.download[i]


# -- 2, 4: indices against the plant, physical entries ---------------------------------------------------
@pytest.mark.parametrize("policy", ["greedy", "distill"])
def test_relay_edge_beyond_the_plant_is_refused(engines, policy):
    with pytest.raises(LiveStateError, match=r"relay_edge 99 is not an edge server of the plant \(edge servers 0..3\)"):
        engines[policy].decide(TASK, {**STATE, "relay_edge": 99})
    assert engines[policy].decide(TASK, {**STATE, "relay_edge": 3}).target  # the last server is fine


@pytest.mark.parametrize("policy", ["greedy", "distill"])
def test_device_beyond_the_plant_is_refused(engines, policy):
    with pytest.raises(LiveStateError, match="task 0 comes from device 999, but the plant has devices 0..29"):
        engines[policy].decide({**TASK, "device": 999}, STATE)
    assert engines[policy].decide({**TASK, "device": 29}, STATE).target


@pytest.mark.parametrize("field, value, needle", [
    ("edge_backlog_s", [0.1, -1.0, 0.0, 0.0], "edge_backlog_s[1] is -1; it must be at least 0"),
    ("edge_cpu_ghz", [20, 0, 30, 30], "edge_cpu_ghz[1] is 0; it must be positive"),
    ("edge_cpu_ghz", [-20, 20, 30, 30], "edge_cpu_ghz[0] is -20; it must be positive"),
    ("uplink_mbps", [20, 30, -10, 5], "uplink_mbps[2] is -10; it must be at least 0"),
])
def test_unphysical_state_entries_are_refused(engines, field, value, needle):
    with pytest.raises(ValidationError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        engines["greedy"].decide(TASK, {**STATE, field: value})
    line = json.dumps({"task": TASK, "state": {**STATE, field: value}})
    assert engines["greedy"].decide_line(line, 1) == {"line": 1, "id": None, "error": f"line 1: state: {needle}"}


# -- 3: NaN and infinity, for every policy ----------------------------------------------------------------
@pytest.mark.parametrize("policy", ["greedy", "distill"])
@pytest.mark.parametrize("where, field, value", [
    ("state", "edge_backlog_s", [float("nan")] * 4),
    ("state", "device_cpu_ghz", float("inf")),
    ("state", "uplink_mbps", [20, float("inf"), 10, 5]),
    ("state", "backhaul_mbps", float("inf")),
    ("task", "deadline_s", float("inf")),
    ("task", "input_mbit", float("inf")),
])
def test_non_finite_input_is_refused_by_every_policy(engines, policy, where, field, value):
    task, state = (({**TASK, field: value}, STATE) if where == "task" else (TASK, {**STATE, field: value}))
    who = "task 0" if where == "task" else "state of task 0"
    with pytest.raises(ObservationError, match=f"{who} has a non-finite value in field '{field}'"):
        engines[policy].decide(task, state)
    with pytest.raises(ObservationError):
        engines[policy].decide_many([TASK, task], [STATE, state])
    out = engines[policy].decide_line(json.dumps({"task": task, "state": state}), 1)
    assert f"non-finite value in field '{field}'" in out["error"] and "internal error" not in out["error"]


# -- 5: a damaged contract is a ContractError with a sentence ----------------------------------------------
def _meta(contract: dict) -> dict[str, str]:
    return {CONTRACT_KEY: json.dumps(contract)}


def test_runtime_dtypes_are_the_contract_dtypes():
    from policies.runtime.contract import DTYPES
    from policies.runtime.policy import _DTYPES

    assert set(_DTYPES) == set(DTYPES)


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c["inputs"][0].pop("name"), "input 0 has no 'name'"),
    (lambda c: c.__setitem__("inputs", None), "'inputs' is not a non-empty list"),
    (lambda c: c["observation"].__setitem__("dim", None), "observation.dim is None, not a positive whole number"),
    (lambda c: c["action"].pop("output"), "action.output (the graph output holding the action) is missing"),
    (lambda c: c["action"].__setitem__("params", None), "action.params is not an object"),
    (lambda c: c.__setitem__("state", [{"input": "h_in", "output": "h_out", "shape": [1], "dtype": "float16"}]),
     "state 'h_in' has dtype 'float16', which this runtime cannot feed"),
    (lambda c: c.__setitem__("state", [{"input": "h_in"}]), "state entry 0 does not name its graph 'input' and 'output'"),
])
def test_parse_contract_refuses_a_damaged_structure(edit, needle):
    contract = read_contract(DISTILL)
    edit(contract)
    with pytest.raises(ContractError, match="'x.onnx' has a damaged policy contract: ") as exc:
        parse_contract(_meta(contract), "x.onnx")
    assert needle in str(exc.value)


def _tampered(src: Path, dst: Path, edit) -> Path:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    contract = json.loads(props[CONTRACT_KEY])
    edit(contract)
    props[CONTRACT_KEY] = json.dumps(contract)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("src, edit, needle", [
    ("factory_distill_s2", lambda c: c["inputs"][0].pop("name"), "has a damaged policy contract: input 0 has no 'name'"),
    ("factory_toppo_s2", lambda c: c["state"][0].__setitem__("dtype", "float16"), "dtype 'float16'"),
    ("factory_distill_s2", lambda c: c["action"].pop("output"), "action.output"),
    ("factory_distill_s2", lambda c: c["observation"].__setitem__("dim", None), "observation.dim is None"),
    ("factory_distill_s2", lambda c: c.__setitem__("inputs", None), "'inputs' is not a non-empty list"),
    ("factory_amarl_s2", lambda c: c["action"].__setitem__("params", {}),
     "gives the action decoder 'factory_alternatives' no 'alternatives' in action.params"),
    ("factory_amarl_s2", lambda c: c["action"]["params"]["alternatives"].pop("share"),
     "lists its alternatives without equally long 'target', 'share' and 'download' columns"),
    ("factory_maddpg_s2", lambda c: c["action"]["params"].pop("eta_stretch"), "no 'eta_stretch' in action.params"),
])
def test_damaged_policy_file_is_a_contract_error(tmp_path, src, edit, needle):
    path = _tampered(TRAINED / f"{src}.onnx", tmp_path / f"{src}.onnx", edit)
    with pytest.raises(ContractError) as exc:
        OnnxPolicy(path, make_simulator("factory"))
    assert needle in str(exc.value) and str(path) in str(exc.value)
