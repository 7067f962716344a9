"""The CLI: JSON shapes, and bad arguments end with one sentence and a non-zero exit, never a traceback."""

import json
import subprocess
import sys

import pytest

from policies.config import list_presets


def run(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "policies.cli", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_clean_error(proc, needle):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr, proc.stderr
    # ours is one sentence on one line; argparse's own errors add its (possibly wrapped) usage text first
    assert proc.stderr.strip().splitlines()[-1].startswith("aigc-offload")


def test_scenarios_lists_every_preset():
    out = json.loads(run("scenarios", "--json", check=True).stdout)
    names = {p["preset"] for p in out["presets"]}
    assert {"mato", "gmel", "aiecof", "ladts", "edgeaigc", "factory"} <= names == set(list_presets())
    for p in out["presets"]:
        assert p["policies"] and p["parameters"]


def test_unknown_scenario():
    assert_clean_error(run("evaluate", "--scenario", "nope", "--policies", "random"), "unknown scenario or preset 'nope'")


def test_unknown_policy():
    assert_clean_error(run("evaluate", "--scenario", "ladts", "--policies", "random,telepathy"), "unknown policy 'telepathy'")


def test_bad_episode_count():
    assert_clean_error(run("evaluate", "--scenario", "ladts", "--policies", "random", "--episodes", "0"), "must be at least 1")


def test_malformed_trace(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("this is not a trace\n")
    assert_clean_error(run("evaluate", "--scenario", "ladts", "--policies", "random", "--trace", str(bad)), "bad.jsonl")


def test_trace_of_another_scenario(tmp_path):
    path = tmp_path / "gmel.jsonl"
    run("trace", "--scenario", "gmel", "--episodes", "1", "--seed", "0", "--out", str(path), check=True)
    assert_clean_error(run("evaluate", "--scenario", "ladts", "--policies", "random", "--trace", str(path)),
                       "made for scenario 'gmel'")


@pytest.mark.parametrize("body, needle", [
    ("scenario: ladts\nslot_s: -1\n", "is invalid"),
    ("scenario: ladts\n  : : [\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("slot_s: 1\n", "must name its scenario"),
    ("scenario: warp_drive\nslot_s: 1\n", "unknown scenario 'warp_drive'"),
])
def test_invalid_preset(tmp_path, body, needle):
    path = tmp_path / "preset.yaml"
    path.write_text(body)
    assert_clean_error(run("evaluate", "--scenario", str(path), "--policies", "random"), needle)


def test_unknown_override_field():
    assert_clean_error(run("evaluate", "--scenario", "ladts", "--policies", "random", "--set", "warp=9"), "is invalid")


def test_evaluate_json_shape_and_trace_replay(tmp_path):
    trace = tmp_path / "ladts.jsonl"
    run("trace", "--scenario", "ladts", "--episodes", "1", "--seed", "3", "--out", str(trace), check=True)
    gen = json.loads(run("evaluate", "--scenario", "ladts", "--policies", "random,opt", "--episodes", "1",
                         "--seed", "3", "--json", check=True).stdout)
    rep = json.loads(run("evaluate", "--scenario", "ladts", "--policies", "random,opt", "--episodes", "1",
                         "--seed", "3", "--trace", str(trace), "--json", check=True).stdout)
    assert gen["scenario"] == "ladts" and gen["episodes"] == 1 and gen["seed"] == 3
    assert set(gen["results"]) == {"random", "opt"}
    assert gen["results"] == rep["results"]
    assert gen["results"]["opt"]["latency_s"] < gen["results"]["random"]["latency_s"]


def test_bench_train_times_both_update_rates_on_a_small_scene():
    tiny = ["--set", "num_stations=3", "--set", "slots_per_episode=8", "--set", "learning_starts=10"]
    out = json.loads(run("bench", "train", "--episodes", "2", *tiny, "--json", check=True).stdout)
    one, three = out["settings"]["1"], out["settings"]["3"]
    assert one["episodes_measured"] == three["episodes_measured"] == 2
    assert three["updates_per_episode"] == 3 * one["updates_per_episode"] > 0
    for r in (one, three):
        assert r["cpu_s_per_episode"] > 0 and r["speedup_vs_authors_cpu"] == pytest.approx(78.0 / r["cpu_s_per_episode"])
    bad = run("bench", "train", "--episodes", "1", *tiny[:4], "--set", "learning_starts=100000")
    assert bad.returncode == 2 and "no episode" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_env_json_shape():
    out = json.loads(run("bench", "env", "--json", check=True).stdout)
    assert set(out["scenarios"]) == {"mato", "gmel", "aiecof", "ladts", "edgeaigc", "factory"}
    for name, r in out["scenarios"].items():
        assert r["decisions"] > 0 and r["decisions_per_s"] > 0, name
    assert out["ladts_opt_episode_s"] > 0 and out["ladts_opt"]["tasks"] > 20000
