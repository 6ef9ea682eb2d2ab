"""End to end: ``splitcomp-bottlenecks`` writes its tables and plot and logs them to MLflow."""

import csv
from pathlib import Path
from urllib.parse import urlparse


def test_resnet18_report_and_mlflow_run(run_task, mlflow_runs, tmp_path):
    result = run_task("bottlenecks", "model=torchvision", "model.name=resnet18", "dataset.image_size=64",
                      "bottleneck=paper", "codec=raw")
    run_dir = tmp_path / "run"
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

    (run,) = mlflow_runs()
    assert run.info.status == "FINISHED" and run.info.run_name == "bottlenecks-resnet18"
    metrics = run.data.metrics
    assert metrics["cuts"] == len(rows) and metrics["natural_bottlenecks"] == len(natural)
    assert 0 < metrics["analysis_s"] < 60
    artifacts = Path(urlparse(run.info.artifact_uri).path)
    assert {"cuts.csv", "cuts.md", "cuts.png"} <= {path.name for path in artifacts.iterdir()}


def test_bad_model_name_is_one_sentence(run_task):
    result = run_task("bottlenecks", "model=torchvision", "model.name=resnet19", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "resnet19" in result.stderr.strip().splitlines()[-1]
