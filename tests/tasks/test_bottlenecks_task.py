"""End to end: ``splitcomp-bottlenecks`` writes its tables and plot and logs them to MLflow."""

import csv
from pathlib import Path
from urllib.parse import urlparse

import pytest


@pytest.fixture(scope="module")
def analyses(run_tasks_at_once, tmp_path_factory):
    """name -> (the finished ``splitcomp-bottlenecks`` process, its output folder), run side by side."""
    root = tmp_path_factory.mktemp("bottlenecks")
    results = run_tasks_at_once(root, {
        "resnet18": ["model=torchvision", "model.name=resnet18", "dataset.image_size=64", "bottleneck=paper",
                     "codec=raw"],
        "resnet19": ["model=torchvision", "model.name=resnet19"]}, module="bottlenecks")
    return {name: (result, root / name / "run") for name, result in results.items()}


def test_resnet18_report_and_mlflow_run(analyses, mlflow_runs):
    result, run_dir = analyses["resnet18"]
    assert result.returncode == 0, result.stderr[-3000:]
    with (run_dir / "cuts.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["name"] == "input" and rows[-1]["name"] == "output"
    assert rows[0]["bytes"] == str(3 * 64 * 64)  # the uint8 camera image
    natural = [row for row in rows if row["natural"] == "True"]
    assert len(natural) >= 3
    assert all(int(row["elements"]) < 3 * 64 * 64 for row in natural)
    assert (run_dir / "cuts.png").stat().st_size > 10_000
    markdown = (run_dir / "cuts.md").read_text()
    assert markdown.count("\n| ") == len(rows) + 1  # header and one line per cut
    for row in natural:  # the printed summary lists every natural bottleneck
        assert f"| {row['name']} |" in result.stdout

    (run,) = mlflow_runs("resnet18")
    assert run.info.status == "FINISHED" and run.info.run_name == "bottlenecks-resnet18"
    metrics = run.data.metrics
    assert metrics["cuts"] == len(rows) and metrics["natural_bottlenecks"] == len(natural)
    assert metrics["analysis_s"] > 0  # logged; its speed is a benchmark's business, not a test's
    artifacts = Path(urlparse(run.info.artifact_uri).path)
    assert {"cuts.csv", "cuts.md", "cuts.png"} <= {path.name for path in artifacts.iterdir()}


def test_bad_model_name_is_one_sentence(analyses):
    result, _ = analyses["resnet19"]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "resnet19" in result.stderr.strip().splitlines()[-1]
