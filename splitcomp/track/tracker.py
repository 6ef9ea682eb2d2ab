"""MLflow logging: one MLflow run per experiment run, in an embedded SQLite store by default."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from splitcomp.errors import ConfigError, PeerError
from splitcomp.redact import redact, redact_text
from splitcomp.track.tags import job_tags, sweep_parent_run_id

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402  (after the telemetry switch)

# The user's MLFLOW_TRACKING_URI, read before this process calls mlflow.set_tracking_uri (which
# writes that variable), so one run's store never leaks into the next run of the same process.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")

_MAX_PARAM_LEN = 500  # MLflow's limit on a param value (older stores: 250/500)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become their string form."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an unreachable tracking server (MLflow itself retries for minutes)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PeerError(f"cannot reach the MLflow tracking server at {uri} ({reason}); start it or fix "
                        "tracking.uri / MLFLOW_TRACKING_URI") from None


def resolve_tracking_uri(uri: str | None) -> str:
    """``MLFLOW_TRACKING_URI`` wins over the config; a relative sqlite path gets its folder made."""
    uri = USER_TRACKING_URI or uri or "sqlite:///outputs/mlflow.db"
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    return uri


class Tracker:
    """A thin wrapper over one active MLflow run; every logging call of the package goes here."""

    def __init__(self, run: mlflow.ActiveRun) -> None:
        self.run = run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def experiment_id(self) -> str:
        return self.run.info.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The flattened params, secrets redacted (see splitcomp.redact)."""
        clean = {k: str(v)[:_MAX_PARAM_LEN] for k, v in redact(flatten(params)).items()}
        items = list(clean.items())
        for i in range(0, len(items), 100):  # MLflow caps one batch at 100 params
            mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if v is not None}
        if numeric:
            mlflow.log_metrics(numeric, step=step)

    def log_series(self, name: str, values: list[float], timestamps_ms: list[int] | None = None) -> None:
        """A per-step metric series (one value per request) in a single batched call."""
        from mlflow.entities import Metric

        stamps = timestamps_ms or [0] * len(values)
        metrics = [Metric(name, float(v), int(ts), step) for step, (v, ts) in enumerate(zip(values, stamps))]
        client = mlflow.MlflowClient()
        for i in range(0, len(metrics), 1000):
            client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=subdir)

    def log_text(self, text: str, name: str) -> None:
        mlflow.log_text(text, name)

    def log_figure(self, figure: Any, name: str) -> None:
        mlflow.log_figure(figure, name)

    def log_records(self, records: list[Mapping[str, Any]], name: str = "records.csv") -> None:
        """Per-request records as a CSV artifact."""
        import pandas as pd

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            pd.DataFrame(list(records)).to_csv(path, index=False)
            mlflow.log_artifact(str(path))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: redact_text(str(v)) for k, v in tags.items()})


def use_experiment(tracking_uri: str, name: str) -> None:
    """Make ``name`` the active experiment. With an embedded SQLite store its artifacts live in
    ``mlartifacts/`` beside the database (an absolute location, readable from any folder),
    not in a ``./mlruns`` of whatever the current folder is."""
    if tracking_uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        folder = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve().parent / "mlartifacts"
        try:
            mlflow.create_experiment(name, artifact_location=folder.as_uri())
        except mlflow.exceptions.MlflowException:
            pass  # created meanwhile by a parallel job
    mlflow.set_experiment(name)


@contextmanager
def start_run(
    uri: str | None = None,
    experiment: str = "splitcomp",
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
    parent_run_id: str | None = None,
) -> Iterator[Tracker]:
    """Open an MLflow run; it ends FINISHED, FAILED on an exception, KILLED on Ctrl-C."""
    tracking_uri = resolve_tracking_uri(uri)
    if tracking_uri.startswith(("http://", "https://")):
        check_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        use_experiment(tracking_uri, experiment)
    except Exception as exc:  # connection refused, bad URI, ...
        raise PeerError(f"cannot reach the MLflow tracking store at {tracking_uri} ({exc}); "
                        "check tracking.uri or MLFLOW_TRACKING_URI") from None
    run_tags = dict(tags or {})
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    run_tags = {k: redact_text(str(v)) for k, v in run_tags.items()}
    with mlflow.start_run(run_name=run_name, nested=nested, tags=run_tags) as run:
        tracker = Tracker(run)
        if params:
            tracker.log_params(params)
        try:
            yield tracker
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")
            raise
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise


def start_run_from_config(tracking_cfg: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                          run_name: str | None = None, **kwargs: Any) -> Any:
    """``start_run`` with ``tracking.uri`` / ``tracking.experiment`` taken from the config group and
    the flattened full config logged as params. Inside a multirun the run becomes a child of the
    sweep's parent run, and it is tagged with the Hydra job's overrides (splitcomp.track.sweep)."""

    if "experiment" not in tracking_cfg:
        raise ConfigError("tracking.experiment is missing; set it to the MLflow experiment name")
    kwargs["tags"] = {**job_tags(), **(kwargs.get("tags") or {})}
    kwargs.setdefault("parent_run_id", sweep_parent_run_id())
    return start_run(uri=tracking_cfg.get("uri"), experiment=tracking_cfg["experiment"], run_name=run_name,
                     params=config, **kwargs)
