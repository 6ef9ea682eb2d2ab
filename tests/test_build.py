"""The assembly path: named config options come from Hydra's composition, and building a model
never fits a head as a side effect of instantiating its config."""

from __future__ import annotations

import logging

import pytest
from hydra import initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from splitcomp.build import FITTED_MODEL, build_model, group_option, policy_config
from splitcomp.errors import ConfigError, ModelError
from splitcomp.experiment import policies_to_run


def test_compare_with_options_are_composed_from_the_policy_group():
    assert policy_config("oracle")._target_ == "splitcomp.policy.oracle.Oracle"
    assert group_option("estimator", "last", "the estimator")._target_.endswith("LastEstimator")
    with pytest.raises(ConfigError, match="compare_with names an unknown policy 'nope'"):
        policy_config("nope")


def test_a_policy_from_the_running_apps_search_path_is_found(tmp_path):
    """Inside a running app, the options come from its config search path, not from a folder of
    the package: a user's own config dir provides policies too."""
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "mine.yaml").write_text("_target_: splitcomp.policy.simple.Static\ncut: input\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        assert policy_config("mine").cut == "input"


def test_the_main_policy_comes_first_and_compare_with_adds_the_others():
    cfg = OmegaConf.create({"policy": {"_target_": "splitcomp.policy.dynamic.Dynamic"},
                            "compare_with": ["device_only", "oracle"]})
    main, policies = policies_to_run(cfg)
    assert main == "dynamic" and list(policies) == ["dynamic", "device_only", "oracle"]
    assert policies["oracle"]._target_ == "splitcomp.policy.oracle.Oracle"


def fitted_config(checkpoint, fit_if_missing: bool):
    return OmegaConf.create({
        "_target_": FITTED_MODEL, "_recursive_": False,
        "backbone": {"_target_": "splitcomp.workload.models.torchvision_model", "name": "mobilenet_v3_small",
                     "weights": None, "image_size": 32},
        "dataset": {"_target_": "splitcomp.workload.datasets.SamplesDataset", "image_size": 32},
        "checkpoint": str(checkpoint), "fit_if_missing": fit_if_missing, "fit": {"progress": False},
    })


def test_a_missing_head_is_fitted_as_a_logged_step_then_loaded(tmp_path, caplog):
    checkpoint = tmp_path / "head.pt"
    with pytest.raises(InstantiationException) as refused:
        build_model(fitted_config(checkpoint, fit_if_missing=False))
    assert isinstance(refused.value.__cause__, ModelError) and "splitcomp-train" in str(refused.value.__cause__)
    assert not checkpoint.exists()
    with caplog.at_level(logging.INFO, logger="splitcomp"):
        model = build_model(fitted_config(checkpoint, fit_if_missing=True))
    assert checkpoint.is_file() and not model.training
    assert any("fitting a head" in r.getMessage() and str(checkpoint) in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="splitcomp"):
        build_model(fitted_config(checkpoint, fit_if_missing=True))
    assert not any("fitting a head" in r.getMessage() for r in caplog.records)  # once: later builds load
