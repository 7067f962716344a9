"""ONNX export of the papers' learners trained on the factory (policies/train/factory_agents.py): MADDPG-MATO
(per-device actors stacked, MATO's eq. 17 action over the factory's targets), AMARL (shared actor over the
factory's joint alternatives) and TOPPO (LSTM actor over the alternatives, state per device). Tiny runs are
trained here, exported with a parity check, and the torch-free runtime must act as the trained run."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from policies.evaluate import evaluate  # noqa: E402
from policies.runtime import ContractError, OnnxPolicy, read_contract  # noqa: E402
from policies.runtime.decoders import DECODERS  # noqa: E402
from policies.scenarios import make_simulator  # noqa: E402
from policies.scenarios.base import OffloadView  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PARITY = 2000
TINY_PRESET = {"num_controllers": 3, "num_cameras": 3, "slots_per_episode": 12}
KINDS = {  # algo: (training config, episodes)
    "factory_maddpg": ({"batch_size": 16, "learning_starts": 12, "hidden": 16, "checkpoint_every": 1}, 3),
    "factory_amarl": ({"batch_size": 8, "hidden": 16, "warmup_episodes": 1, "checkpoint_every": 1}, 3),
    "factory_toppo": ({"hidden": 16, "lstm_hidden": 8, "checkpoint_every": 1}, 3),
}


def tiny_sim(**more):
    return make_simulator("factory", {**TINY_PRESET, **more})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """algo -> (run dir, exported file, export summary)."""
    from policies.export import export_run
    from policies.train.registry import train

    base = tmp_path_factory.mktemp("factory_agents")
    out = {}
    for algo, (cfg, episodes) in KINDS.items():
        run = base / algo
        train(algo, "factory", 0, run, {**TINY_PRESET, **cfg}, episodes=episodes, progress=False)
        res = export_run(run, base / f"{algo}.onnx", ["aigc-offload", "export", str(run)], parity_samples=PARITY)
        out[algo] = (run, Path(res["out"]), res)
    return out


@pytest.mark.parametrize("algo", list(KINDS))
def test_export_passes_parity_and_writes_the_contract(exported, algo):
    run, path, res = exported[algo]
    sim = tiny_sim()
    c = read_contract(path)
    assert c["scenario"] == "factory" and c["provenance"]["algorithm"] == algo
    p = res["parity"]
    assert p["passed"], p
    assert p["max_abs_diff_continuous"] <= 1e-5 and p["max_rel_diff_raw"] <= 1e-5 and p["decision_agreement"] >= 0.9999
    assert c["action"]["targets"] == list(sim.target_names)
    roles = [i["role"] for i in c["inputs"]]
    if algo == "factory_maddpg":
        assert roles == ["observation", "agent_index"] and c["inputs"][1]["count"] == sim.M
        a = c["action"]
        assert a["decoder"] == "mato_maddpg" and a["params"]["servers"] == sim.K - 1  # edge0..edge3, cloud
        assert a["params"]["download_targets"] == [1, 2, 3, 4] and a["share"] == "continuous"
        assert p["continuous_outputs"] == "offload share" and p["samples"] == PARITY
    else:
        tg, sh, dl = sim.candidates()
        alt = c["action"]["params"]["alternatives"]
        assert c["action"]["decoder"] == "factory_alternatives" and len(alt["target"]) == tg.size == 37
        assert alt["target"] == tg.tolist() and alt["share"] == sh.tolist() and alt["download"] == dl.tolist()
    if algo == "factory_amarl":
        assert roles == ["observation"] and c["state"] == [] and set(c["action"]["modes"]) == {"deterministic"}
    if algo == "factory_toppo":
        assert roles == ["observation", "state", "state"]
        assert [(s["input"], s["output"], s["shape"], s["key"]) for s in c["state"]] == \
            [("h_in", "h_out", [8], "source"), ("c_in", "c_out", [8], "source")]
        assert set(c["action"]["modes"]) == {"deterministic", "sample"}
        assert c["policy"]["mode"] == "deterministic"  # the factory default eval_sample = false
        assert set(p["modes"]) == {"deterministic", "sample"} and all(r["passed"] for r in p["modes"].values())


@pytest.mark.parametrize("algo", list(KINDS))
def test_runtime_evaluates_like_the_trained_run(exported, algo):
    """The file (its evaluated mode) and the run directory (the trainer's torch policy) give the same metrics
    on the same workloads. MADDPG's continuous share eta is squashed in float32 by torch and in float64 by the
    runtime (|diff| ~1e-8, the parity gate is 1e-5), so its latencies agree to ~1e-8 relative."""
    run, path, _ = exported[algo]
    ev = evaluate(tiny_sim(), [str(run), str(path)], episodes=3, seed=4)
    a, b = ev.results[str(run)], ev.results[str(path)]
    rel = 1e-6 if algo == "factory_maddpg" else 1e-12
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-12), key


def test_toppo_sample_mode_makes_the_trained_policys_draws(exported):
    from policies.export import load_run
    from policies.heuristics import make_policy
    from policies.workload import episode_rng

    run, path, _ = exported["factory_toppo"]
    spec, _, _, _ = load_run(run)
    sim = tiny_sim()
    ref = spec.rollout("sample", sim)
    pol = OnnxPolicy(path, sim, mode="sample")
    heur = make_policy("random", sim)
    n = 0
    for ep in range(3):
        sim.reset(sim.generate_workload(episode_rng(9, ep, 0), ep))
        heur.reset(episode_rng(9, ep, 1))
        pol.reset(np.random.default_rng([9, ep]))
        ref.reset()
        while not sim.done:
            view = sim.view()
            if view.n:
                step = pol.step(view)
                _, dec = ref.step(view, step["feeds"], step["uniform"])
                np.testing.assert_array_equal(dec.target, step["decision"].target)
                np.testing.assert_array_equal(dec.share, step["decision"].share)
                np.testing.assert_array_equal(dec.download, step["decision"].download)
                n += view.n
            sim.step(heur.decide(view))
    assert n > 20


def test_alternatives_decoder_books_the_chosen_alternative_and_skips_disallowed_targets():
    sim = tiny_sim()
    tg, sh, dl = sim.candidates()
    params = {"output": "logits", "alternatives": {"target": tg.tolist(), "share": sh.tolist(), "download": dl.tolist()}}
    C, K = tg.size, sim.K
    rng = np.random.default_rng(0)
    out = rng.normal(size=(5, C)).astype(np.float32)
    allowed = np.ones((5, K), dtype=bool)
    view = OffloadView(slot=0, target_names=tuple(sim.target_names), source=np.arange(5), allowed=allowed,
                       local_target=0, has_share=True, has_download=True)
    d = DECODERS["factory_alternatives"](out, view, params)
    best = out.argmax(1)
    np.testing.assert_array_equal(d.target, tg[best])
    np.testing.assert_array_equal(d.share, sh[best])
    np.testing.assert_array_equal(d.download, dl[best])
    one = DECODERS["factory_alternatives"](out[:1], OffloadView(0, tuple(sim.target_names), np.arange(1),
                                                               allowed[:1], local_target=0,
                                                               has_share=True, has_download=True), params)
    assert one.target[0] == d.target[0] and one.share[0] == d.share[0]  # the one-row path agrees
    # a target the view forbids is never chosen, whatever its score
    allowed[:, 1] = False
    out[:, tg == 1] = 100.0
    d2 = DECODERS["factory_alternatives"](out, view, params)
    assert not (d2.target == 1).any()
    # sampling: u = 0 takes the first allowed alternative with mass, u -> 1 the last
    d3 = DECODERS["factory_alternatives"](out, view, params, uniform=np.full(5, 1 - 1e-12))
    assert (d3.target != 1).all()


def test_contract_refuses_another_set_of_alternatives_or_devices(exported):
    _, amarl_path, _ = exported["factory_amarl"]
    # three share levels: 1 + 4 edges x 3 x 2 + 3 cloud = 28 alternatives, not 37
    other = tiny_sim(share_levels=[0.5, 0.75, 1.0])  # the observation layout is the same: only the decoder sees it
    with pytest.raises(ContractError, match="chooses among 37 alternatives \\(target, share, download\\), but the "
                                            "simulator offers 28"):
        OnnxPolicy(amarl_path, other, strict_preset=False)
    from policies.runtime.decoders import check_factory_alternatives

    params = read_contract(amarl_path)["action"]["params"]
    msg = check_factory_alternatives(params, other, "a.onnx")
    assert msg is not None and "37 alternatives" in msg and "offers 28" in msg
    _, maddpg_path, _ = exported["factory_maddpg"]
    with pytest.raises(ContractError, match="holds 6 per-device actors, but the simulator has 8 devices"):
        OnnxPolicy(maddpg_path, tiny_sim(num_cameras=5), strict_preset=False)


def test_maddpg_download_flag_only_on_edge_servers(exported):
    _, path, _ = exported["factory_maddpg"]
    sim = tiny_sim()
    pol = OnnxPolicy(path, sim)
    params = pol.contract["action"]["params"]
    N = params["servers"]
    rows = np.zeros((3, N + 2), dtype=np.float32)
    rows[:, N] = 5.0  # eta ~ 1: offload
    rows[:, N + 1] = 5.0  # download wanted
    rows[0, 0] = 1.0  # edge0
    rows[1, N - 1] = 1.0  # the cloud
    rows[2, N] = -5.0  # eta = 0: local
    view = OffloadView(0, tuple(sim.target_names), np.arange(3), np.ones((3, sim.K), bool), local_target=0,
                       has_share=True, has_download=True)
    d = DECODERS["mato_maddpg"](rows, view, params)
    assert d.target.tolist() == [1, sim.K - 1, 0] and d.download.tolist() == [True, False, False]
    for i in range(3):  # the one-row path agrees
        one_view = OffloadView(0, tuple(sim.target_names), np.arange(1), np.ones((1, sim.K), bool), local_target=0,
                               has_share=True, has_download=True)
        one = DECODERS["mato_maddpg"](rows[i:i + 1], one_view, params)
        assert one.target[0] == d.target[i] and one.download[0] == d.download[i]


def test_parity_fails_when_the_file_differs_from_the_trained_policy(exported):
    from policies.export import check_parity, load_run

    for algo in KINDS:
        run, path, _ = exported[algo]
        spec, sim, _, _ = load_run(run)
        with torch.no_grad():
            for p in spec.graph.parameters():
                p.add_(5e-2)
        p = check_parity(path, spec, sim, 300)
        assert not p["passed"] and p["max_rel_diff_raw"] > 1e-5, (algo, p)


def test_export_cli_and_the_runtime_without_torch(exported, tmp_path):
    run, _, _ = exported["factory_toppo"]
    out = tmp_path / "t.onnx"
    proc = subprocess.run([sys.executable, "-m", "policies.cli", "export", str(run), "--out", str(out),
                           "--check-parity", "500"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "mode deterministic (evaluated): 500 decisions" in proc.stdout and "PASSED" in proc.stdout
    files = [str(exported[a][1]) for a in KINDS]
    code = f"""
import sys
from policies.evaluate import evaluate
from policies.scenarios import make_simulator
ev = evaluate(make_simulator('factory', {TINY_PRESET!r}), {files!r} + ['random'], episodes=1, seed=0)
assert len(ev.results) == 4
assert 'torch' not in sys.modules, 'torch imported'
print('ok')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
