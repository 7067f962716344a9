"""The trained policies the factory ships (policies/trained/*.onnx, issue #5 item 8): each loads in the
torch-free runtime against its scenario's simulator (the contract check), carries its provenance (training
and export commands, seed, commit, a passed 10,000-observation parity check), has a card beside it, and in a
short evaluation beats ``random`` and ``greedy`` on its scenario by a margin measured on paired episodes
(the same workloads for every policy): the mean reward difference must exceed twice its standard error.
The deployment's default policy must be one of them: the one the factory report selected."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from policies.evaluate import generate_workloads, run_episode
from policies.heuristics import make_policy
from policies.runtime import OnnxPolicy, read_contract
from policies.scenarios import make_simulator

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "policies" / "trained"
FILES = sorted(SHIPPED.glob("*.onnx"))
EPISODES, SEED = 4, 3000  # workloads disjoint from training, the report (1000 + k) and the cards (2000)
DEPLOYMENT = ROOT / "ros2_ws" / "src" / "aigc_offload" / "config" / "factory.yaml"


def test_policies_are_shipped_and_small():
    assert FILES, "no trained policy under policies/trained/"
    for f in FILES:
        assert f.stat().st_size < 5_000_000, f"{f.name} is {f.stat().st_size} bytes: too big for git"
    for f in SHIPPED.rglob("*"):
        assert f.stat().st_size < 5_000_000, f"{f} is too big for git"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_contract_provenance_and_card(path):
    c = read_contract(path)
    sim = make_simulator(c["preset_name"])
    pol = OnnxPolicy(path, sim)  # strict: scenario, observation layout, preset hash, decoder, targets
    assert pol.contract["scenario"] == sim.name
    prov = c["provenance"]
    assert prov["seed"] is not None and prov["git_commit"] and prov["training_command"] and prov["command"]
    parity = prov["parity"]
    assert parity["passed"] and parity["samples"] >= 10_000 and parity["decision_agreement"] >= 0.9999
    card = SHIPPED / path.stem / "README.md"
    assert card.is_file(), f"{path.name} has no card at {card}"
    text = card.read_text()
    assert path.name in text and f"seed {prov['seed']}" in text and "aigc-offload export" in text


def _rewards(sim, policy_spec, workloads) -> np.ndarray:
    pol = OnnxPolicy(policy_spec, sim) if str(policy_spec).endswith(".onnx") else make_policy(policy_spec, sim)
    return np.array([run_episode(sim, pol, wl, SEED)["reward"] for wl in workloads])


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_beats_random_and_greedy_by_a_measured_margin(path):
    c = read_contract(path)
    sim = make_simulator(c["preset_name"])
    workloads = generate_workloads(sim, EPISODES, SEED)
    mine = _rewards(sim, path, workloads)
    for heuristic in ("random", "greedy"):
        diff = mine - _rewards(sim, heuristic, workloads)  # paired: the same workloads
        se = diff.std(ddof=1) / np.sqrt(diff.size)
        assert diff.mean() > 2 * se and diff.mean() > 0, (
            f"{path.name} vs {heuristic}: reward difference {diff.mean():+.4f} per task over {EPISODES} episodes, "
            f"standard error {se:.4f} (per episode {np.round(diff, 4).tolist()})")


def test_the_deployment_default_is_the_selected_shipped_policy():
    index = json.loads((SHIPPED / "shipped.json").read_text())
    names = {Path(s["file"]).name for s in index["shipped"]}
    assert names == {f.name for f in FILES}, "shipped.json and the .onnx files differ: regenerate the policies"
    default = index["default"] + ".onnx"
    assert default in names
    if DEPLOYMENT.is_file():
        policy = yaml.safe_load(DEPLOYMENT.read_text())["gateway"]["policy"]
        assert policy == default, (f"the deployment runs {policy}, the factory report selected {default}")
