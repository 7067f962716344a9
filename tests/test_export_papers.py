"""ONNX export of the papers' actors (issue #5): AMARL (GMEL), TOPPO (AIECOF, LSTM state), LAD-TS (denoising
chain, latent state, noise) and TD3 (EdgeAIGC, projection). Tiny runs are trained here, exported with a
parity check, and the torch-free runtime must act as the trained policy: same decisions, its state per key,
its modes, feasible allocations, refusals that name the mismatch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from policies.errors import UserError  # noqa: E402
from policies.evaluate import evaluate  # noqa: E402
from policies.runtime import CONTRACT_KEY, ContractError, OnnxPolicy, load_policy, read_contract  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.workload import episode_rng  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PARITY = 2000

KINDS = {
    # kind: (algo, scenario preset, preset overrides, training config, episodes)
    "amarl": ("amarl", "gmel", {"num_devices": 4, "slots_per_episode": 6},
              {"batch_size": 8, "hidden": 16, "warmup_episodes": 1, "checkpoint_every": 1, "update_every": 2}, 2),
    "toppo": ("toppo", "aiecof", {"num_devices": 4, "num_edges": 2, "slots_per_episode": 8},
              {"batch_size": 8, "hidden": 16, "lstm_hidden": 8, "checkpoint_every": 1}, 2),
    "ladts": ("ladts", "ladts", {"num_stations": 4, "tasks_max": 20, "slots_per_episode": 12, "capacity_ghz_min": 3,
                                 "capacity_ghz_max": 20},
              {"learning_starts": 32, "batch_size": 32, "checkpoint_every": 1, "denoising_steps": 3}, 2),
    "td3": ("td3", "edgeaigc", {"num_users": 3, "slots_per_episode": 4},
            {"batch_size": 16, "learning_starts": 8, "hidden": 16, "checkpoint_every": 1}, 3),
}


def tiny_sim(kind, **more):
    _, scenario, preset, _, _ = KINDS[kind]
    return make_simulator(scenario, {**preset, **more})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """kind -> (run dir, exported file, export summary): tiny runs, exported with a parity check."""
    from policies.export import export_run
    from policies.train.registry import train

    base = tmp_path_factory.mktemp("papers")
    out = {}
    for kind, (algo, scenario, preset, cfg, episodes) in KINDS.items():
        run = base / kind
        train(algo, scenario, 0, run, {**preset, **cfg}, episodes=episodes, progress=False)
        res = export_run(run, base / f"{kind}.onnx", ["aigc-offload", "export", str(run)], parity_samples=PARITY)
        out[kind] = (run, Path(res["out"]), res)
    return out


def _episode_views(sim, episodes=1, seed=0):
    """Every decision point of ``episodes`` episodes driven by the random heuristic."""
    from policies.heuristics import make_policy

    pol = make_policy("random", sim)
    for ep in range(episodes):
        sim.reset(sim.generate_workload(episode_rng(seed, ep, 0), ep))
        pol.reset(episode_rng(seed, ep, 1))
        while not sim.done:
            view = sim.view()
            yield ep, view
            sim.step(pol.decide(view))


# -- export, contract, parity ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_export_passes_parity_and_writes_the_contract(exported, kind):
    run, path, res = exported[kind]
    c = read_contract(path)
    cfg = json.loads((run / "config.json").read_text())
    assert c["scenario"] == KINDS[kind][1] and c["preset_hash"] == cfg["preset_hash"]
    assert c["provenance"]["algorithm"] == KINDS[kind][0] and c["provenance"]["parity"]["samples"] == PARITY
    p = res["parity"]
    assert p["passed"], p
    assert p["max_abs_diff_continuous"] <= 1e-5 and p["max_rel_diff_raw"] <= 1e-5
    assert p["decision_agreement"] >= 0.9999
    roles = [i["role"] for i in c["inputs"]]
    modes = set(c["action"]["modes"])
    if kind == "amarl":
        assert roles == ["observation"] and c["state"] == [] and c["action"]["decoder"] == "argmax_target"
        assert c["action"]["targets"] == ["local", "edge0", "edge1", "edge2", "edge3", "edge4"]
        assert p["torch_self_max_abs_diff_raw"] is not None  # the batched check
    if kind == "toppo":
        assert roles == ["observation", "state", "state"] and c["action"]["decoder"] == "categorical_target"
        assert [(s["input"], s["output"], s["shape"], s["key"]) for s in c["state"]] == \
            [("h_in", "h_out", [8], "source"), ("c_in", "c_out", [8], "source")]
        assert modes == {"deterministic", "sample"} and c["policy"]["mode"] == "sample"  # eval_sample default
        assert c["action"]["sampling"]["uniform"]["dtype"] == "float64"
        assert set(p["modes"]) == modes and all(r["samples"] == PARITY for r in p["modes"].values())
    if kind == "ladts":
        assert roles == ["observation", "agent_index", "state", "noise"]
        noise = c["inputs"][3]
        assert noise["shape"] == ["batch", 2, 4]  # I - 1 = 2 noisy reverse steps, 4 stations
        st = c["state"][0]
        assert st["key"] == ["slot", "source", "index"] and st["init_table"]["shape"] == [12, 4, 20, 4]
        assert modes == {"deterministic", "argmax", "sample"} and c["policy"]["mode"] == "sample"
        assert set(p["modes"]) == modes
    if kind == "td3":
        assert roles == ["observation"] and c["action"]["decoder"] == "edgeaigc_projection"
        assert c["action"]["params"]["association"] == "action" and p["continuous_outputs"] == "allocation shares"
    # one file, weights inside
    assert not list(path.parent.glob("*.onnx.data"))


@pytest.mark.parametrize("kind", list(KINDS))
def test_contract_refuses_mismatched_scenario_and_preset(exported, kind):
    _, path, _ = exported[kind]
    scenario = KINDS[kind][1]
    other = "mato" if scenario != "mato" else "gmel"
    with pytest.raises(ContractError, match=f"is a policy for scenario '{scenario}', but the simulator runs "
                                            f"scenario '{other}'") as exc:
        OnnxPolicy(path, make_simulator(other))
    assert isinstance(exc.value, UserError)
    with pytest.raises(ContractError, match=f"was exported for preset '{scenario}' with hash"):
        OnnxPolicy(path, tiny_sim(kind, slots_per_episode=5))


def test_contract_refusals_name_the_state_table_and_allocation_sizes(exported, tmp_path):
    _, ladts_path, _ = exported["ladts"]
    # a preset with more task indices than the trained latent store holds
    with pytest.raises(ContractError, match=r"keeps initial 'latent_in' values for index 0..19 \(tasks_max=20 when "
                                            r"trained\), but the simulator has tasks_max=30"):
        OnnxPolicy(ladts_path, tiny_sim("ladts", tasks_max=30), strict_preset=False)
    with pytest.raises(ContractError, match="expects observation field 2 to be 'backlog_gcycles' \\(width 4\\), but "
                                            "the simulator's field 2 is 'backlog_gcycles' \\(width 5\\)"):
        OnnxPolicy(ladts_path, tiny_sim("ladts", num_stations=5), strict_preset=False)  # one agent per station
    # a damaged state table
    model = onnx.load(str(ladts_path))
    for prop in model.metadata_props:
        if prop.key == f"{CONTRACT_KEY}.state.latent_in":
            prop.value = prop.value[:-8] + "AAAAAAA="
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    with pytest.raises(ContractError, match="initial table of state 'latent_in' whose sha256 differs"):
        OnnxPolicy(tmp_path / "damaged.onnx", tiny_sim("ladts"))
    # an allocation for another number of edge servers (the paper observation does not show E)
    _, td3_path, _ = exported["td3"]
    three = tiny_sim("td3", num_edges=3, edge_xy_km=[[0.25, 0.5], [0.75, 0.5], [0.5, 0.9]])
    with pytest.raises(ContractError, match="allocates for 2 edges, but the simulator has 3 edges"):
        OnnxPolicy(td3_path, three, strict_preset=False)
    # a mode the policy does not offer
    _, toppo_path, _ = exported["toppo"]
    with pytest.raises(ContractError, match="acts in mode\\(s\\) deterministic, sample; mode 'argmax' is not one"):
        OnnxPolicy(toppo_path, tiny_sim("toppo"), mode="argmax")


# -- the runtime acts as the trained policy -----------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_runtime_evaluates_like_the_trained_run(exported, kind):
    """``evaluate`` of the .onnx file (its evaluated mode, draws from the evaluation's seeded rng) equals
    ``evaluate`` of the run directory (the trainer's torch policy): the same discrete decisions give the
    same metrics; TD3's continuous shares differ by the float32 actor outputs' last bits (~1e-7)."""
    run, path, _ = exported[kind]
    sim = tiny_sim(kind)
    ev = evaluate(sim, [str(run), str(path)], episodes=2, seed=3)
    a, b = ev.results[str(run)], ev.results[str(path)]
    assert a.keys() == b.keys()
    rel = 1e-5 if kind == "td3" else 1e-12
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-12), key


def test_toppo_keeps_lstm_state_per_device_and_reset_clears_it(exported):
    _, path, _ = exported["toppo"]
    sim = tiny_sim("toppo")
    pol = OnnxPolicy(path, sim, mode="deterministic")
    assert pol.state_keys == ("source",) and pol.state_of(0) == {}
    views = [v for _, v in _episode_views(sim) if v.n]
    first = views[0]
    dev = int(first.source[0])
    from policies.runtime import take_rows

    one = take_rows(first, [0])
    out1 = pol.step(one)
    h1 = pol.state_of(dev)["h_in"].copy()
    np.testing.assert_array_equal(out1["feeds"]["h_in"], np.zeros((1, 8), np.float32))  # a fresh device: zeros
    np.testing.assert_array_equal(h1, out1["outputs"]["h_out"][0])
    out2 = pol.step(one)  # the same device again: it reads the state its first decision left
    np.testing.assert_array_equal(out2["feeds"]["h_in"][0], h1)
    assert not np.array_equal(pol.state_of(dev)["h_in"], h1)
    others = {int(s) for v in views for s in v.source} - {dev}
    assert others, "the tiny episode must involve another device"
    other = next(iter(others))
    assert pol.state_of(other) == {}  # untouched by this device's decisions
    pol.reset()
    assert pol.state_of(dev) == {}
    again = pol.step(one)
    np.testing.assert_array_equal(again["outputs"]["actor_out"], out1["outputs"]["actor_out"])
    # a batch with one device twice runs its rows in order (the second sees the first's state)
    pol.reset()
    twice = pol.step(take_rows(first, [0, 0]))
    np.testing.assert_array_equal(twice["feeds"]["h_in"][1], twice["outputs"]["h_out"][0])


def test_ladts_keeps_the_latent_per_slot_station_and_index(exported):
    from policies.train.common import load_checkpoint

    run, path, _ = exported["ladts"]
    latent0 = load_checkpoint(run)["agents"]["latent"].numpy()  # (slots, stations, tasks, stations)
    sim = tiny_sim("ladts")
    pol = OnnxPolicy(path, sim, mode="deterministic")
    assert pol.state_keys == ("slot", "source", "index")
    ep_views = [v for _, v in _episode_views(sim) if v.n]
    view = ep_views[0]
    step = pol.step(view)
    idx = view.features["index"]
    np.testing.assert_array_equal(step["feeds"]["latent_in"], latent0[view.slot, view.source, idx])  # trained store
    np.testing.assert_array_equal(step["feeds"]["noise"], 0.0)  # deterministic: no chain noise
    key = (view.slot, int(view.source[0]), int(idx[0]))
    kept = pol.state_of(key)["latent_in"]
    np.testing.assert_array_equal(kept, step["outputs"]["latent_out"][0])
    np.testing.assert_allclose(kept.sum(), 1.0, atol=1e-5)  # the stored pi is a probability vector
    assert pol.state_of((view.slot + 1, int(view.source[0]), int(idx[0]))) == {}
    again = pol.step(view)  # the same keys: the chain now starts from the stored pi
    np.testing.assert_array_equal(again["feeds"]["latent_in"], step["outputs"]["latent_out"])
    pol.reset()
    assert pol.state_of(key) == {}
    np.testing.assert_array_equal(pol.step(view)["feeds"]["latent_in"], step["feeds"]["latent_in"])
    noisy = OnnxPolicy(path, sim, mode="argmax")
    noisy.reset(np.random.default_rng(1))
    assert np.abs(noisy.step(view)["feeds"]["noise"]).max() > 0  # argmax / sample modes draw the noise


@pytest.mark.parametrize("kind", ["toppo", "ladts"])
def test_modes_repeat_exactly_and_sampling_follows_the_seed(exported, kind):
    _, path, _ = exported[kind]
    sim = tiny_sim(kind)

    def episode(mode, seed):
        pol = OnnxPolicy(path, sim, mode=mode)
        pol.reset(np.random.default_rng(seed))
        out = []
        for _, view in _episode_views(sim, seed=11):
            out.append(pol.decide(view).target.copy())
        return np.concatenate(out)

    det = episode("deterministic", 0)
    np.testing.assert_array_equal(det, episode("deterministic", 1))  # no draws: identical whatever the rng
    s0 = episode("sample", 5)
    np.testing.assert_array_equal(s0, episode("sample", 5))  # the same seed: the same draws
    assert not np.array_equal(s0, episode("sample", 6))  # another seed: other draws
    assert OnnxPolicy(path, sim).mode == "sample"  # default: the mode the policy was evaluated with
    assert OnnxPolicy(path, sim, deterministic=True).mode == "deterministic"


def test_td3_runtime_decisions_are_always_feasible(exported):
    from policies.runtime.decoders import DECODERS, project_allocation_row
    from policies.scenarios.edgeaigc import project_batch

    _, path, _ = exported["td3"]
    sim = tiny_sim("td3")
    pol = load_policy(str(path), sim)
    params = pol.contract["action"]["params"]
    decode = DECODERS["edgeaigc_projection"]
    rng = np.random.default_rng(0)
    n = 0
    for _, view in _episode_views(sim, episodes=25):
        d = pol.decide(view)
        d.validate(view)  # 18b-18g, every user served
        A = sim.preset.action_dim
        for raw in (rng.uniform(-1, 1, (1, A)), np.ones((1, A)), -np.ones((1, A)),
                    np.round(rng.uniform(-1, 1, (1, A)) * 2) / 2, rng.normal(0, 3, (1, A))):
            decode(raw.astype(np.float32), view, params).validate(view)
            x = rng.random(A) if n % 2 else np.round(rng.random(A) * 4) / 4  # ties and exact 0.5 scores
            for rule in ("action", "nearest"):
                ref = project_batch(view, x[None], rule, params["share_floor"])
                got = project_allocation_row(view, x, rule, params["share_floor"])
                for r, g in zip(ref, got):
                    np.testing.assert_array_equal(r[0], g)  # the one-row projection is project_batch, bit for bit
        n += 1
    assert n == 100


def test_parity_fails_when_the_file_differs_from_the_trained_policy(exported):
    """The check can fail: a torch policy whose weights moved after export is caught."""
    from policies.export import check_parity, load_run

    for kind in ("toppo", "td3"):
        run, path, _ = exported[kind]
        spec, sim, _, _ = load_run(run)
        with torch.no_grad():
            for p in spec.graph.parameters():
                p.add_(1e-2)
        p = check_parity(path, spec, sim, 300)
        assert not p["passed"] and p["max_rel_diff_raw"] > 1e-5, (kind, p)


# -- the command line and the torch-free runtime ------------------------------------------------------------
def test_export_cli_with_parity(exported, tmp_path):
    run, _, _ = exported["ladts"]
    out = tmp_path / "l.onnx"
    proc = subprocess.run([sys.executable, "-m", "policies.cli", "export", str(run), "--out", str(out),
                           "--check-parity", "1000"], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "mode sample (evaluated): 1000 decisions" in proc.stdout and "PASSED" in proc.stdout
    assert read_contract(out)["provenance"]["parity"]["modes"]["deterministic"]["decision_agreement"] >= 0.9999


def test_runtime_runs_the_paper_policies_without_torch(exported):
    files = {k: str(exported[k][1]) for k in KINDS}
    presets = {k: (KINDS[k][1], KINDS[k][2]) for k in KINDS}
    code = f"""
import sys
from policies.evaluate import evaluate
from policies.scenarios import make_simulator
for kind, path in {files!r}.items():
    scenario, preset = {presets!r}[kind]
    ev = evaluate(make_simulator(scenario, preset), [path, 'random'], episodes=1, seed=0)
    assert set(ev.results) == {{path, 'random'}}
assert 'torch' not in sys.modules, 'torch imported'
print('ok')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
