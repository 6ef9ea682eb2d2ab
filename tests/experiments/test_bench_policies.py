"""bench_policies: tuning and test traces kept apart, the two targets written on the test windows."""

import argparse
import json

import bench_policies
import pytest


def test_tuning_and_test_traces_are_disjoint_and_cover_every_kind():
    tuning = {f for _, f in bench_policies.TUNING}
    test = {f for _, f in bench_policies.TEST}
    assert not tuning & test
    kinds = {"3G", "4G", "5G", "WiFi"}
    assert {k for k, _ in bench_policies.TUNING} == kinds == {k for k, _ in bench_policies.TEST}


def test_a_tiny_run_writes_both_targets_and_lists_the_traces(tmp_path, monkeypatch):
    if not bench_policies.TRACES_DIR.is_dir():
        pytest.skip("real traces not found")
    # one short window per trace and a two-step search keep it to seconds
    monkeypatch.setattr(bench_policies, "SEARCH", [[{"fast_drop": False}, {"fast_drop": True}]])
    out = tmp_path / "bench.json"
    assert bench_policies.main(["--window", "4", "--windows-per-trace", "1", "--no-progress", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    names = {t["name"]: t for t in result["targets"]}
    assert names["dynamic_mean_over_oracle"]["op"] == "<=" and names["dynamic_mean_over_oracle"]["target"] == 1.05
    assert names["dynamic_beats_best_static_share"]["target"] == 0.95
    assert {t["file"] for t in result["tuning_traces"]} == {f for _, f in bench_policies.TUNING}
    assert {t["file"] for t in result["test_traces"]} == {f for _, f in bench_policies.TEST}
    assert {r["split"] for r in result["rows"]} == {"test"}  # every reported figure is on test windows
    assert all(r["policies"]["oracle"]["mean_s"] > 0 for r in result["rows"])


def row(dynamic_s, oracle_s, best_static_s, top_cut_share):
    policies = {"dynamic": {"mean_s": dynamic_s}, "oracle": {"mean_s": oracle_s, "top_cut_share": top_cut_share},
                "best_static": {"mean_s": best_static_s}}
    return {"policies": policies}


def test_targets_average_the_window_ratios_and_count_wins_where_the_best_cut_changes():
    rows = [row(0.11, 0.10, 0.12, 0.60),  # changing, dynamic wins
            row(0.30, 0.20, 0.25, 0.80),  # changing, dynamic loses
            row(0.50, 0.50, 0.40, 1.00)]  # one cut throughout: not counted for the share
    targets = {t["name"]: t for t in bench_policies.compute_targets(rows)}
    over = targets["dynamic_mean_over_oracle"]
    assert over["value"] == pytest.approx((1.1 + 1.5 + 1.0) / 3)
    assert over["pooled_ratio"] == pytest.approx(0.91 / 0.80)
    share = targets["dynamic_beats_best_static_share"]
    assert share["value"] == pytest.approx(0.5) and share["windows"] == 2


def test_the_references_do_not_depend_on_the_dynamic_settings(monkeypatch):
    """The oracle and best_static never read the rate estimate: their figures are the same
    whatever estimator the benchmark hands them."""
    if not bench_policies.TRACES_DIR.is_dir():
        pytest.skip("real traces not found")
    args = argparse.Namespace(window=4.0, windows_per_trace=1, delay=0.01, seed=0)
    profiles = bench_policies.Profiles.load(bench_policies.PROFILES)
    window = bench_policies.build_windows("test", bench_policies.TEST[:1], profiles, args)[2]
    first = bench_policies.baselines(window)
    monkeypatch.setattr(bench_policies, "DEFAULT", bench_policies.DynamicSettings(estimator="last", max_age_s=0.25))
    assert bench_policies.baselines(window) == first
