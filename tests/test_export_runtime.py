"""ONNX export and the torch-free runtime: the contract in the file, decisions equal to the torch
policies', refusals naming the mismatch, no torch in the runtime, the decide stream, the decision bench."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from policies.config import preset_hash  # noqa: E402
from policies.errors import UserError  # noqa: E402
from policies.runtime import CONTRACT_KEY, ContractError, DecisionEngine, OnnxPolicy, load_policy, read_contract  # noqa: E402
from policies.runtime.contract import layout_json  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.shipped import default_policy_run  # noqa: E402
from policies.workload import episode_rng  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY_MATO = {"num_devices": 3, "slots_per_episode": 4}
TINY_TRAIN = {**TINY_MATO, "batch_size": 16, "learning_starts": 4, "checkpoint_every": 1, "hidden": 16}
TINY_FACTORY = {"slots_per_episode": 6}

GOOD_TASK = {"device": 3, "kind": "report", "model": "report-m", "units": 200, "input_mbit": 3.0,
             "output_mbit": 0.5, "deadline_s": 2.0}
GOOD_STATE = {"device_cpu_ghz": 2.0, "uplink_mbps": [20, 30, 10, 5], "edge_backlog_s": [0.1, 0.0, 0.3, 0.0],
              "edge_cpu_ghz": [20, 20, 30, 30], "edge_cached_models": [["report-m"], [], ["defect-s"], []]}


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mato_runs(tmp_path_factory):
    """Tiny MATO runs (1 episode) of every MATO algorithm, exported with a short parity check."""
    from policies.export import export_run
    from policies.train.registry import train

    base = tmp_path_factory.mktemp("mato")
    out = {}
    for algo in ("maddpg", "maddpg_nomodel", "saddpg"):
        run = base / algo
        train(algo, "mato", 0, run, TINY_TRAIN, episodes=1, progress=False)
        res = export_run(run, base / f"{algo}.onnx", ["aigc-offload", "export", str(run)], parity_samples=300)
        out[algo] = (run, Path(res["out"]), res)
    return out


def _factory_actor(sim, seed=0):
    torch.manual_seed(seed)
    try:
        from policies.train.factory_distill import FactoryActor
    except ImportError:  # the spec's shape, until the trainer module lands
        from torch import nn

        class FactoryActor(nn.Module):
            def __init__(self, obs_dim, num_targets, num_share_levels, hidden=(256, 256)):
                super().__init__()
                sizes = [obs_dim, *hidden, num_targets + num_share_levels + 2]
                layers = []
                for i in range(len(sizes) - 1):
                    layers += [nn.Linear(sizes[i], sizes[i + 1])] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
                self.net = nn.Sequential(*layers)

            def forward(self, obs):
                return self.net(obs)
    return FactoryActor(sim.obs_dim(), sim.K, len(sim.preset.share_levels), (64, 64)).eval()


@pytest.fixture(scope="module")
def factory_file(tmp_path_factory):
    from policies.export import export_actor, factory_export

    sim = make_simulator("factory", TINY_FACTORY)
    actor = _factory_actor(sim)
    path = tmp_path_factory.mktemp("factory") / "factory.onnx"
    res = export_actor(factory_export(actor, sim, "factory_distill"), sim, path, "factory", "factory_test",
                       {"command": ["test"], "seed": 0}, parity_samples=500)
    return path, actor, res


def _tamper(src: Path, dst: Path, edit) -> Path:
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    contract = json.loads(props[CONTRACT_KEY])
    new = edit(contract)
    del model.metadata_props[:]
    if new is not None:
        onnx.helper.set_model_props(model, {CONTRACT_KEY: json.dumps(new)})
    onnx.save(model, str(dst))
    return dst


# -- export writes the contract -----------------------------------------------------------------------
def test_export_writes_contract(mato_runs):
    run, path, res = mato_runs["maddpg"]
    c = read_contract(path)
    cfg = json.loads((run / "config.json").read_text())
    sim = make_simulator("mato", TINY_MATO)
    assert c["format"] == "aigc-offload-policy" and c["contract_version"] == 1
    assert c["scenario"] == "mato" and c["preset_name"] == "mato"
    assert c["preset_hash"] == cfg["preset_hash"] == preset_hash(sim.preset)
    assert c["observation"]["dim"] == sim.obs_dim() == 25
    assert c["observation"]["fields"] == layout_json(sim.OBS_LAYOUT)
    assert [i["role"] for i in c["inputs"]] == ["observation", "agent_index"] and c["inputs"][1]["count"] == 3
    assert c["state"] == [] and c["outputs"][0]["shape"] == ["batch", 5]
    assert c["action"]["decoder"] == "mato_maddpg" and c["action"]["targets"] == ["local", "edge0", "edge1", "edge2"]
    prov = c["provenance"]
    assert prov["seed"] == 0 and prov["algorithm"] == "maddpg" and prov["training_command"] == cfg["command"]
    assert prov["command"][:2] == ["aigc-offload", "export"] and prov["exported_at"]
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40
    assert prov["parity"]["passed"] and prov["parity"]["samples"] == 300
    p = res["parity"]
    assert p["max_abs_diff_continuous"] <= 1e-5 and p["max_rel_diff_raw"] <= 1e-5 and p["decision_agreement"] >= 0.9999
    # weights inside the file, dynamic batch
    assert not list(path.parent.glob("*.onnx.data"))
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param


# -- runtime decisions equal the torch policy's -------------------------------------------------------
@pytest.mark.parametrize("algo", ["maddpg", "maddpg_nomodel", "saddpg"])
def test_mato_runtime_equals_torch_policy(mato_runs, algo):
    from policies.train.registry import get_algo, load_trained_policy

    run, path, _ = mato_runs[algo]
    sim = make_simulator("mato", {**TINY_MATO, **get_algo(algo).preset_overrides})
    onnx_pol = OnnxPolicy(path, sim)
    torch_pol = load_trained_policy(str(run), sim)
    steps = 0
    for ep in range(3):
        sim.reset(sim.generate_workload(episode_rng(5, ep, 0), ep))
        while not sim.done:
            view = sim.view()
            a, b = onnx_pol.decide(view), torch_pol.decide(view)
            np.testing.assert_array_equal(a.target, b.target)
            np.testing.assert_allclose(a.share, b.share, atol=1e-6)
            assert (a.download is None) == (b.download is None) == (algo == "maddpg_nomodel")
            if a.download is not None:
                np.testing.assert_array_equal(a.download, b.download)
            sim.step(a)
            steps += 1
    assert steps == 12


def test_factory_runtime_equals_torch_policy(factory_file):
    from policies.train.factory_distill import FactoryDistillPolicy

    path, actor, res = factory_file
    assert res["parity"]["passed"]
    sim = make_simulator("factory", TINY_FACTORY)
    onnx_pol, torch_pol = OnnxPolicy(path, sim), FactoryDistillPolicy("t", sim, actor)
    rows = 0
    sim.reset(sim.generate_workload(episode_rng(1, 0, 0), 0))
    while not sim.done:
        view = sim.view()
        a, b = onnx_pol.decide(view), torch_pol.decide(view)
        np.testing.assert_array_equal(a.target, b.target)
        np.testing.assert_array_equal(a.share, b.share)
        np.testing.assert_array_equal(a.download, b.download)
        sim.step(a)
        rows += view.n
    assert rows > 0


def test_onnx_and_heuristics_are_interchangeable(factory_file):
    path, _, _ = factory_file
    sim = make_simulator("factory", TINY_FACTORY)
    for spec in (str(path), "greedy", "random"):
        pol = load_policy(spec, sim)
        sim.reset(sim.generate_workload(episode_rng(0, 0, 0), 0))
        while not sim.done:
            sim.step(pol.decide(sim.view()))
        assert 0 <= sim.episode_metrics()["completion_rate"] <= 1
    with pytest.raises(UserError, match="oracle"):
        load_policy("opt", sim)
    with pytest.raises(UserError, match="unknown policy 'telepathy'"):
        load_policy("telepathy", sim)


# -- refusals -----------------------------------------------------------------------------------------
def test_contract_mismatches_are_refused(mato_runs, factory_file, tmp_path):
    _, mato_path, _ = mato_runs["maddpg"]
    fac_path, _, _ = factory_file
    mato = make_simulator("mato", TINY_MATO)
    factory = make_simulator("factory", TINY_FACTORY)

    def refused(path, sim, needle, **kw):
        with pytest.raises(ContractError) as exc:
            OnnxPolicy(path, sim, **kw)
        assert needle in str(exc.value), str(exc.value)
        assert isinstance(exc.value, UserError)
        return str(exc.value)

    refused(mato_path, factory, "is a policy for scenario 'mato', but the simulator runs scenario 'factory'")
    refused(fac_path, mato, "is a policy for scenario 'factory'")
    refused(_tamper(fac_path, tmp_path / "none.onnx", lambda c: None), factory,
            "carries no policy contract (ONNX metadata key 'aigc_offload.contract' is missing)")
    refused(_tamper(fac_path, tmp_path / "v9.onnx", lambda c: {**c, "contract_version": 9}), factory,
            "uses policy contract version 9; this runtime reads version(s) 1")

    def rename(c):
        c["observation"]["fields"][1]["name"] = "model_id"
        return c
    refused(_tamper(fac_path, tmp_path / "name.onnx", rename), factory,
            "expects observation field 1 to be 'model_id' (name 'model_id'), but the simulator's field 1 is 'model'")

    def widen(c):
        c["observation"]["fields"][-1]["width"] = 2
        return c
    refused(_tamper(fac_path, tmp_path / "width.onnx", widen), factory, "(width 2), but the simulator's field")

    def rescale(c):
        c["observation"]["fields"][2]["scale"] = 20.0
        return c
    refused(_tamper(fac_path, tmp_path / "scale.onnx", rescale), factory,
            "expects observation field 'input_mbit' scaled by 20.0, but the simulator scales it by 10.0")

    def drop(c):
        c["observation"]["fields"].pop()
        return c
    refused(_tamper(fac_path, tmp_path / "drop.onnx", drop), factory, "the simulator has an extra field 'backhaul_backlog_s'")

    def decoder(c):
        c["action"]["decoder"] = "telepathy"
        return c
    refused(_tamper(fac_path, tmp_path / "dec.onnx", decoder), factory, "needs the action decoder 'telepathy'")

    # the preset: strict refuses another hash; lenient accepts a preset of the same layout and sizes
    other = make_simulator("factory", {"slots_per_episode": 7})
    refused(fac_path, other, "was exported for preset 'factory' with hash")
    OnnxPolicy(fac_path, other, strict_preset=False)
    refused(mato_path, make_simulator("mato", {**TINY_MATO, "num_devices": 5}), "holds 3 per-device actors, but the "
            "simulator has 5 devices", strict_preset=False)
    fewer = OnnxPolicy(mato_path, make_simulator("mato", {**TINY_MATO, "num_devices": 2}), strict_preset=False)
    assert fewer.forward(np.zeros((1, 25), np.float32), np.array([1])).shape == (1, 5)
    with pytest.raises(ContractError, match="holds actors for devices 0..2; device 7 has none"):
        fewer.forward(np.zeros((1, 25), np.float32), np.array([7]))

    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not onnx")
    refused(bad, factory, "is not an ONNX model onnxruntime can load")


# -- per-device state (the format recurrent / latent-state actors use) --------------------------------
def test_state_tensors_are_kept_per_device(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from policies.runtime.contract import CONTRACT_FORMAT

    sim = make_simulator("factory", TINY_FACTORY)
    D, K, S = sim.obs_dim(), sim.K, len(sim.preset.share_levels)
    A = K + S + 2
    V = np.zeros((1, A), np.float32)
    V[0, 0] = -1.0  # state h pushes the target logits away from "local" ...
    V[0, K - 1] = 1.0  # ... towards the cloud as it grows
    W = np.zeros((D, A), np.float32)
    W[0, 0] = 0.5  # with h = 0 and kind = 1 (image): local wins
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["obs", "W"], ["a"]), helper.make_node("MatMul", ["h_in", "V"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["actor_out"]), helper.make_node("Add", ["h_in", "one"], ["h_out"])],
        "stateful",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", D]),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("actor_out", TensorProto.FLOAT, ["batch", A]),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(V, "V"),
         numpy_helper.from_array(np.ones((1, 1), np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = {
        "format": CONTRACT_FORMAT, "contract_version": 1, "scenario": "factory", "preset_name": "factory",
        "preset_hash": preset_hash(sim.preset), "observation": {"dim": D, "fields": layout_json(sim.OBS_LAYOUT)},
        "inputs": [{"name": "obs", "role": "observation", "shape": ["batch", D], "dtype": "float32"},
                   {"name": "h_in", "role": "state", "shape": ["batch", 1], "dtype": "float32"}],
        "outputs": [{"name": "actor_out", "role": "action"}, {"name": "h_out", "role": "state"}],
        "state": [{"input": "h_in", "output": "h_out", "shape": [1], "dtype": "float32", "init_value": 0.0,
                   "key": "source"}],
        "action": {"decoder": "factory_heads", "output": "actor_out", "targets": list(sim.target_names),
                   "params": {"heads": [{"name": "target", "width": K, "values": list(sim.target_names)},
                                        {"name": "share_level", "width": S, "values": list(sim.preset.share_levels)},
                                        {"name": "download", "width": 2, "values": [False, True]}],
                              "local_target": 0, "cloud_target": K - 1}},
        "policy": {"name": "stateful"}, "provenance": {}}
    onnx.helper.set_model_props(model, {CONTRACT_KEY: json.dumps(contract)})
    path = tmp_path / "stateful.onnx"
    onnx.save(model, str(path))

    pol = OnnxPolicy(path, sim)
    assert pol.state_of(0) == {}  # the warm-up run keeps no state
    engine = DecisionEngine(pol, sim)
    task = {**GOOD_TASK, "kind": "image", "model": "defect-s", "units": 5, "device": 4}
    first = engine.decide(task, GOOD_STATE)
    assert first.target == "local" and float(pol.state_of(4)["h_in"][0]) == 1.0
    second = engine.decide(task, GOOD_STATE)
    assert second.target == "cloud" and float(pol.state_of(4)["h_in"][0]) == 2.0
    assert engine.decide({**task, "device": 5}, GOOD_STATE).target == "local"  # another device: its own state
    # one device twice in a batch: the rows run in order
    many = engine.decide_many([{**task, "device": 9}, {**task, "device": 9}], [GOOD_STATE, GOOD_STATE])
    assert [d.target for d in many] == ["local", "cloud"] and float(pol.state_of(9)["h_in"][0]) == 2.0
    pol.reset()
    assert pol.state_of(4) == {}


# -- torch-free runtime -------------------------------------------------------------------------------
def test_runtime_never_imports_torch(factory_file):
    path, _, _ = factory_file
    code = f"""
import sys
import policies.runtime
from policies.runtime import DecisionEngine, OnnxPolicy, load_policy
assert 'torch' not in sys.modules, 'import'
engine = DecisionEngine.load({str(path)!r}, preset='factory', overrides={TINY_FACTORY!r})
d = engine.decide({GOOD_TASK!r}, {GOOD_STATE!r})
assert d.target in ('local', 'edge0', 'edge1', 'edge2', 'edge3', 'cloud'), d
h = DecisionEngine.load('greedy', preset='factory').decide({GOOD_TASK!r}, {GOOD_STATE!r})
assert 'torch' not in sys.modules, 'decide'
print('ok', d.to_dict()['policy'])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok factory_test"


# -- aigc-offload decide --------------------------------------------------------------------------------
def test_decide_stream(factory_file):
    path, _, _ = factory_file
    good = json.dumps({"id": "t1", "task": GOOD_TASK, "state": GOOD_STATE})
    schema = json.dumps({"id": 7, "task": {**GOOD_TASK, "units": 0}, "state": GOOD_STATE})
    wrong_servers = json.dumps({"task": GOOD_TASK, "state": {**GOOD_STATE, "uplink_mbps": [1, 2]}})
    nan = json.dumps({"task": GOOD_TASK, "state": {**GOOD_STATE, "uplink_mbps": [20, float("nan"), 10, 5]}})
    lines = [good, '{"task": {"kind": "report"', "", schema, "[1, 2]", wrong_servers,
             json.dumps({"task": GOOD_TASK}), good, nan]
    proc = subprocess.run([sys.executable, "-m", "policies.cli", "decide", "--policy", str(path), "--set",
                           f"slots_per_episode={TINY_FACTORY['slots_per_episode']}"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 4, 5, 6, 7, 8, 9]  # the blank line 3 gets no answer
    first = out[0]
    assert first["id"] == "t1" and first["policy"] == "factory_test" and first["decision_us"] > 0
    assert first["target"] in ("local", "edge0", "edge1", "edge2", "edge3", "cloud")
    assert first["target_index"] == ["local", "edge0", "edge1", "edge2", "edge3", "cloud"].index(first["target"])
    assert 0 <= first["offload_share"] <= 1 and isinstance(first["download_model"], bool)
    assert out[1]["error"].startswith("line 2 is not valid JSON")
    assert out[2] == {"line": 4, "id": 7, "error": "line 4: task.units: Input should be greater than 0"}
    assert "must be a JSON object" in out[3]["error"]
    assert "uplink_mbps has 2 entries, the preset has 4 edge servers" in out[4]["error"]
    assert out[5]["error"] == "line 7: 'state' is missing"
    assert "non-finite value in field 'uplink_mbps'" in out[7]["error"]
    assert {k: v for k, v in out[6].items() if k not in ("line", "decision_us")} == \
        {k: v for k, v in first.items() if k not in ("line", "decision_us")}

    heur = subprocess.run([sys.executable, "-m", "policies.cli", "decide", "--policy", "greedy"], input=good + "\n",
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert heur.returncode == 0 and json.loads(heur.stdout)["policy"] == "greedy"
    bad = subprocess.run([sys.executable, "-m", "policies.cli", "decide", "--policy", str(path)], input="",
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "was exported for preset 'factory'" in bad.stderr


# -- the export command and the decision bench ------------------------------------------------------------
def test_export_cli(mato_runs, tmp_path):
    run, _, _ = mato_runs["saddpg"]
    out = tmp_path / "s.onnx"
    proc = subprocess.run([sys.executable, "-m", "policies.cli", "export", str(run), "--out", str(out),
                           "--check-parity", "200", "--json"], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["parity"]["passed"] and res["algorithm"] == "saddpg" and out.is_file()
    assert read_contract(out)["provenance"]["parity"]["samples"] == 200
    proc = subprocess.run([sys.executable, "-m", "policies.cli", "export", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 2 and "is not a trained run directory" in proc.stderr


def test_failed_parity_never_replaces_the_output(mato_runs, tmp_path, monkeypatch, capsys):
    import shutil

    import policies.export as ex
    from policies.cli import main as cli_main

    run, good, _ = mato_runs["maddpg"]
    out = tmp_path / "m.onnx"
    shutil.copyfile(good, out)
    before = out.read_bytes()
    real = ex.check_parity
    monkeypatch.setattr(ex, "check_parity", lambda *a, **k: {**real(*a, **k), "passed": False})
    assert cli_main(["export", str(run), "--out", str(out), "--check-parity", "50"]) == 1
    assert out.read_bytes() == before and read_contract(out)["provenance"]["parity"]["passed"]
    assert "was not written" in capsys.readouterr().out
    fresh = tmp_path / "fresh.onnx"
    assert cli_main(["export", str(run), "--out", str(fresh), "--check-parity", "50"]) == 1
    assert not fresh.exists() and not list(tmp_path.glob("*.tmp"))


def test_broken_checkpoint_is_a_user_error(mato_runs, tmp_path, capsys):
    import shutil

    from policies.cli import main as cli_main
    from policies.train.common import CHECKPOINT, load_checkpoint

    run, _, _ = mato_runs["saddpg"]
    ok = load_checkpoint(run)  # a valid checkpoint loads exactly as torch.load does
    ref = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    assert isinstance(ok, dict) and ok.keys() == ref.keys()
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    for content in (b"", b"not a torch checkpoint", (run / CHECKPOINT).read_bytes()[:100]):
        (broken / CHECKPOINT).write_bytes(content)
        with pytest.raises(UserError, match="checkpoint .*checkpoint.pt cannot be read"):
            load_checkpoint(broken)
        capsys.readouterr()
        assert cli_main(["export", str(broken), "--out", str(tmp_path / "b.onnx")]) == 2
        assert "cannot be read" in capsys.readouterr().err and not (tmp_path / "b.onnx").exists()
        assert cli_main(["evaluate", "--scenario", "mato", "--set", "num_devices=3", "--set", "slots_per_episode=4",
                         "--policies", f"run:{broken}", "--episodes", "1"]) == 2
        assert "cannot be read" in capsys.readouterr().err


def test_unwritable_output_fails_before_export(mato_runs, tmp_path, capsys, monkeypatch):
    import policies.export as ex
    from policies.cli import main as cli_main

    run, _, _ = mato_runs["saddpg"]
    monkeypatch.setattr(ex, "load_run", lambda *a: pytest.fail("exported before checking --out"))
    assert cli_main(["export", str(run), "--out", "/proc/aigc_no_such/y.onnx"]) == 2
    assert "cannot write --out" in capsys.readouterr().err
    d = tmp_path / "d.onnx"
    d.mkdir()
    assert cli_main(["export", str(run), "--out", str(d)]) == 2
    assert "is a directory" in capsys.readouterr().err and not list(tmp_path.glob("*.tmp"))
    # the final write itself: no temporary file left behind, a typed error
    with pytest.raises(UserError, match="cannot write"):
        ex.write_atomic(d, b"x")
    assert d.is_dir() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.probe"))

def test_bench_decision_json():
    proc = subprocess.run([sys.executable, "-m", "policies.cli", "bench", "decision", "--json", "--decisions", "200",
                           "--decision-batch", "32"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert {"mato_maddpg", "factory_distill"} <= set(res["policies"])
    for r in res["policies"].values():
        for engine in ("onnxruntime", "torch"):
            assert r[engine]["p50_us"] > 0 and r[engine]["p99_us"] >= r[engine]["p50_us"]
        assert r["batch_decisions_per_s"] > 0 and r["source"]


# -- full parity (slow) -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_parity_10000(mato_runs, factory_file):
    from policies.export import check_parity, factory_export, load_run

    for algo, (run, path, _) in mato_runs.items():
        spec, sim, _, _ = load_run(run)
        p = check_parity(path, spec, sim, 10_000)
        assert p["passed"], (algo, p)
    path, actor, _ = factory_file
    sim = make_simulator("factory", TINY_FACTORY)
    p = check_parity(path, factory_export(actor, sim, "factory_distill"), sim, 10_000)
    assert p["passed"], p
    for run in (ROOT / "runs/mato_maddpg_s0", default_policy_run() or ROOT / "policies/trained/factory_distill_s0"):
        if (run / "checkpoint.pt").is_file():
            spec, sim, _, _ = load_run(run)
            from policies.export import onnx_bytes

            p = check_parity(onnx_bytes(spec), spec, sim, 10_000)
            assert p["passed"], (run, p)


def test_single_row_decoding_equals_batch_decoding():
    from policies.runtime.decoders import DECODERS
    from policies.scenarios.base import OffloadView

    rng = np.random.default_rng(0)
    cases = [("mato_maddpg", 4, 5, {"servers": 3, "eta_stretch": 1.1, "download_threshold": 0.5}),
             ("factory_heads", 6, 12, {"heads": [{"width": 6}, {"width": 4, "values": [0.25, 0.5, 0.75, 1.0]},
                                                 {"width": 2}], "local_target": 0, "cloud_target": 5})]
    for decoder, K, A, params in cases:
        n = 400
        out = (rng.standard_normal((n, A)) * 3).astype(np.float32)
        out[:50, 1] = out[:50, 0]  # ties
        out[50:60, 3] = -3.0  # eta at / below zero
        allowed = rng.random((n, K)) < 0.8
        allowed[:, 0] = True
        view = OffloadView(slot=0, target_names=tuple(f"t{k}" for k in range(K)), source=np.arange(n),
                           allowed=allowed, local_target=0, has_share=True, has_download=True)
        batch = DECODERS[decoder](out, view, params)
        for i in range(n):
            one = DECODERS[decoder](out[i:i + 1], OffloadView(slot=0, target_names=view.target_names,
                                                                source=view.source[i:i + 1], allowed=allowed[i:i + 1],
                                                                local_target=0, has_share=True, has_download=True), params)
            assert one.target[0] == batch.target[i] and one.download[0] == batch.download[i], (decoder, i)
            assert abs(one.share[0] - batch.share[i]) <= 1e-12
            assert allowed[i, batch.target[i]]
