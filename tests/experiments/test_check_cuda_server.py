"""check_cuda_server.py: real weights, real images, non-trivial logits; run here with the server on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from splitcomp.workload.datasets import FASHION_MNIST_ROOT

check = pytest.importorskip("check_cuda_server")


def test_trivial_logits_are_named():
    informative = torch.tensor([[2.0, 0.5, -1.0], [0.1, 3.0, 0.2]])
    assert check.trivial_logits(informative) is None
    assert "zero" in check.trivial_logits(torch.zeros(4, 10))
    assert "same logits" in check.trivial_logits(torch.tensor([[1.0, 2.0], [1.0, 2.0]]))
    assert "same logit" in check.trivial_logits(torch.tensor([[3.0, 3.0], [1.0, 1.0]]))
    assert "class 1" in check.trivial_logits(torch.tensor([[0.0, 2.0], [1.0, 5.0]]))
    assert "not finite" in check.trivial_logits(torch.tensor([[float("nan"), 1.0]]))


class Cut:
    name, bytes = "c", 10


def test_every_class_must_agree_and_logits_stay_within_the_tolerance():
    reference = torch.tensor([[1.000, 0.999, -3.0], [5.0, 0.0, 0.0]])
    close = check.compare(Cut(), reference + 1e-4, reference, [0.001, 0.003, 0.002], rtol=1e-2)
    assert close.passed and close.agreement == 1.0 and close.tail_ms_median == 2.0
    near_tie = reference + torch.tensor([[-0.002, 0.002, 0.0], [0.0, 0.0, 0.0]])
    flipped = check.compare(Cut(), near_tie, reference, [0.001], rtol=1e-2)
    assert not flipped.passed and flipped.agreement == 0.5
    assert flipped.widest_flipped_margin == pytest.approx(0.001, abs=1e-6)  # a near tie: a human can judge it
    far = check.compare(Cut(), reference + 0.1, reference, [0.001], rtol=1e-2)
    assert not far.passed and far.agreement == 1.0 and far.max_rel_logit_diff == pytest.approx(0.02)


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_the_check_runs_on_the_cpu_with_a_fitted_head_and_test_images(tmp_path):
    out = tmp_path / "check.json"
    status = check.main(["--device", "cpu", "--images", "10", "--image-size", "32", "--json", str(out),
                         f"model.checkpoint={tmp_path / 'head.pt'}", "train.limit=100", "train.progress=false"])
    result = json.loads(out.read_text())
    assert status == 0 and result["passed"], result
    assert result["model"] == "lite0" and result["images"] == 10 and result["trivial_logits"] is None
    assert result["classes_predicted"] >= 3  # a fitted head on balanced test images, not one class for all
    assert [r["cut"] for r in result["rows"]][0] == "input" and len(result["rows"]) >= 2
    assert all(r["agreement"] == 1.0 and r["max_rel_logit_diff"] <= 1e-2 for r in result["rows"])
    assert (tmp_path / "head.pt").is_file()  # fitted on first use
