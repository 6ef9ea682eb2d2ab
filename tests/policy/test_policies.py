import dataclasses
from collections import Counter

import numpy as np
import pytest

from splitcomp.errors import ConfigError
from splitcomp.policy import (
    Bandit,
    BestStatic,
    DecisionContext,
    DeviceOnly,
    Dynamic,
    Neurosurgeon,
    ServerOnly,
    Static,
)
from splitcomp.profile.latency import ServerLoad
from splitcomp.scenario import random_walk
from splitcomp.sim import simulate_env


def ctx(candidates, model, rate=None, load=None):
    return DecisionContext(t=0.0, candidates=candidates, latency_model=model, rate_estimate_bps=rate,
                           load=load or ServerLoad())


def names(candidates, index):
    return candidates[index].name


def test_fixed_policies(candidates, model):
    c = ctx(candidates, model, 10e6)
    assert names(candidates, DeviceOnly().choose(c)) == "output"
    assert names(candidates, ServerOnly().choose(c)) == "input"


def test_static_by_name_or_index(candidates, model):
    c = ctx(candidates, model)
    assert names(candidates, Static("mid").choose(c)) == "mid"
    assert names(candidates, Static(2).choose(c)) == "late"
    assert names(candidates, Static("2").choose(c)) == "late"
    assert names(candidates, Static(-1).choose(c)) == "output"


def test_static_with_an_unknown_cut_lists_the_valid_names(candidates, model):
    with pytest.raises(ConfigError, match="input.*mid.*late.*output"):
        Static("layer4").choose(ctx(candidates, model))
    with pytest.raises(ConfigError):
        Static(7).choose(ctx(candidates, model))


def test_dynamic_follows_the_rate(candidates, model):
    policy = Dynamic()
    assert names(candidates, policy.choose(ctx(candidates, model, 0.2e6))) == "output"
    assert names(candidates, policy.choose(ctx(candidates, model, 1e9))) == "input"
    assert names(candidates, policy.choose(ctx(candidates, model, 15e6))) == "mid"
    assert names(candidates, policy.choose(ctx(candidates, model, None))) == "output"  # nothing measured yet


def test_dynamic_reacts_to_the_reported_load(candidates, model):
    busy = ServerLoad(batch_size=1, slowdown=20.0)  # tails 20x slower: 200 ms for the input cut
    assert names(candidates, Dynamic().choose(ctx(candidates, model, 1e9, busy))) != "input"
    queued = ServerLoad(queue_s=1.0)
    assert names(candidates, Dynamic().choose(ctx(candidates, model, 1e9, queued))) == "output"


def test_dynamic_picks_the_argmin_of_the_predictions(candidates, model):
    for rate in np.geomspace(0.1e6, 1e9, 25):
        chosen = Dynamic().choose(ctx(candidates, model, rate))
        predicted = [model.predict(c, rate).total_s for c in candidates]
        assert predicted[chosen] == min(predicted)


def test_hysteresis_reduces_switches(make_env):
    # a rate wandering around the input/mid crossover (~40 Mbit/s)
    trace = random_walk(start_bps=40e6, min_bps=20e6, max_bps=80e6, sigma=0.15, step_s=0.2, duration=120, seed=3)

    def switches(policy):
        cuts = [r["cut_name"] for r in simulate_env(make_env(trace, policy, n=1000))]
        return sum(a != b for a, b in zip(cuts, cuts[1:], strict=False))

    plain, damped = switches(Dynamic()), switches(Dynamic(hysteresis=0.2))
    assert plain > 10  # the plain argmin flips back and forth
    assert damped < plain / 2


def test_best_static_is_the_argmin_of_the_static_means(make_env):
    trace = random_walk(start_bps=10e6, min_bps=1e6, max_bps=100e6, sigma=0.4, duration=60, seed=1)
    env = make_env(trace, n=300)
    means = {}
    for cut in env.candidates:
        records = simulate_env(dataclasses.replace(env, policy=Static(cut.name)))
        means[cut.name] = np.mean([r["latency_s"] for r in records])
    best = BestStatic(simulate=simulate_env)
    best.prepare(env)
    assert env.candidates[best.index].name == min(means, key=means.get)
    assert best.means_s == pytest.approx(means)
    chosen = {r["cut_name"] for r in simulate_env(dataclasses.replace(env, policy=best))}
    assert chosen == {min(means, key=means.get)}


def test_best_static_must_be_prepared(candidates, model):
    with pytest.raises(ConfigError, match="prepare"):
        BestStatic().choose(ctx(candidates, model))


def test_neurosurgeon_regresses_times_from_flops(candidates, model):
    # FLOPs proportional to the profiled times: the regression reproduces them exactly
    flops = {c.name: [c.head_at(1) * 1e9, c.tail_at(1) * 1e10] for c in candidates}
    policy = Neurosurgeon(flops=flops)
    for rate in (0.5e6, 15e6, 1e9):
        c = ctx(candidates, model, rate)
        assert policy.choose(c) == Dynamic().choose(c)
        assert policy.predicted_latencies(c) == pytest.approx([model.predict(x, rate).total_s for x in candidates])


def test_neurosurgeon_predicts_unprofiled_times_from_the_line(candidates, model):
    # head FLOPs say the "late" head costs what a 45 ms head would: the regression overrides
    flops = {"input": [0, 10], "mid": [30, 6], "late": [45, 2], "output": [80, 0]}
    policy = Neurosurgeon(flops=flops)
    lat = policy.predicted_latencies(ctx(candidates, model, 20e6))
    late_profiled = model.predict(candidates[2], 20e6).total_s
    assert lat[2] < late_profiled - 0.005


def test_neurosurgeon_ignores_the_server_load(candidates, model):
    queued = ServerLoad(queue_s=1.0)
    c = ctx(candidates, model, 1e9, queued)
    assert names(candidates, Neurosurgeon().choose(c)) == "input"
    assert names(candidates, Dynamic().choose(c)) == "output"


def test_neurosurgeon_needs_flops_for_every_cut(candidates, model):
    with pytest.raises(ConfigError, match="output"):
        Neurosurgeon(flops={"input": [0, 1], "mid": [1, 1], "late": [2, 1]}).choose(ctx(candidates, model, 1e6))


@pytest.mark.parametrize(("rate_bps", "best"), [(15e6, "mid"), (300e6, "input"), (1e6, "output")])
def test_bandit_converges_to_the_best_cut_in_a_stationary_scenario(rate_bps, best, make_env, constant):
    records = simulate_env(make_env(constant(rate_bps), Bandit(), n=400))
    late = Counter(r["cut_name"] for r in records[-150:])
    assert late[best] >= 0.8 * 150, late


def test_bandit_reacts_to_a_changed_channel(make_env, constant):
    trace = constant(300e6, 20.0)
    trace = dataclasses.replace(trace, times=np.array([0.0, 10.0]), rates_bps=np.array([300e6, 1e6]))
    records = simulate_env(make_env(trace, Bandit(), n=200))  # 20 s at 10 requests/s
    early = Counter(r["cut_name"] for r in records[50:100])
    late = Counter(r["cut_name"] for r in records[-50:])
    assert early["input"] >= 40
    assert late["output"] >= 35, late


def test_bad_policy_settings_are_config_errors():
    with pytest.raises(ConfigError):
        Dynamic(hysteresis=1.5)
    with pytest.raises(ConfigError):
        Bandit(gamma=0)
