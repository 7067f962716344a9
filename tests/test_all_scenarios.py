"""Every shipped preset: its heuristics run, metrics are finite and keyed as `evaluate` promises."""

import math

import numpy as np
import pytest

from policies.config import list_presets, load_preset, preset_hash
from policies.evaluate import evaluate
from policies.scenarios import make_simulator
from policies.scenarios.base import METRIC_KEYS


@pytest.mark.parametrize("preset", list_presets())
def test_every_heuristic_runs(preset):
    sim = make_simulator(preset)
    # oracle and search baselines are exercised (and timed) in each scenario's own tests
    heuristics = [p for p in sim.POLICIES if p not in ("opt", "pso", "ga")]
    res = evaluate(sim, heuristics, episodes=1, seed=11, progress=False)
    for pol, metrics in res.results.items():
        known = [k for k in metrics if k in METRIC_KEYS]
        assert known, f"{preset}/{pol} reports none of {METRIC_KEYS}"
        for k, v in metrics.items():
            assert math.isfinite(v), f"{preset}/{pol}: {k} = {v}"
        for k in ("completion_rate", "drop_rate", "hit_rate"):
            if k in metrics:
                assert 0.0 <= metrics[k] <= 1.0


@pytest.mark.parametrize("preset", list_presets())
def test_observation_matches_layout(preset):
    sim = make_simulator(preset)
    wl = sim.generate_workload(np.random.default_rng(0), 0)
    sim.reset(wl)
    view = sim.view()
    obs = sim.observation(view)
    assert obs.dtype == np.float32
    assert obs.shape[-1] == sim.obs_dim()
    assert np.all(np.isfinite(obs))


@pytest.mark.parametrize("preset", list_presets())
def test_preset_hash_is_stable(preset):
    assert preset_hash(load_preset(preset)) == preset_hash(load_preset(preset))
