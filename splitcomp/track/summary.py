"""Summary metrics of a run's per-request records (the same for the runtime and the simulator)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``accuracy``, ``accuracy_reference``, ``agreement``, latency percentiles (ms), bytes, shares."""
    if not records:
        return {"requests": 0}
    latency_ms = np.array([r["latency_s"] for r in records], dtype=float) * 1000
    finite = latency_ms[np.isfinite(latency_ms)]
    metrics: dict[str, float] = {
        "requests": len(records),
        "latency_ms_mean": float(np.mean(finite)) if len(finite) else float("nan"),
        "latency_ms_p50": float(np.percentile(finite, 50)) if len(finite) else float("nan"),
        "latency_ms_p95": float(np.percentile(finite, 95)) if len(finite) else float("nan"),
        "latency_ms_max": float(np.max(finite)) if len(finite) else float("nan"),
        "bytes_sent_mean": float(np.mean([r["bytes_up"] for r in records])),
        "fallbacks": int(sum(bool(r.get("fallback")) for r in records)),
    }
    metrics.update(_accounting(records))
    metrics.update(_accuracy(records))
    metrics.update(_prediction_error(records))
    for name, count in Counter(str(r["cut_name"]) for r in records).items():
        metrics[f"share_cut_{name}"] = count / len(records)
    return {k: v for k, v in metrics.items() if v is not None}


def _accounting(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """How the latency splits: mean waits and probe delays, and the time no part measured
    (``unaccounted_s``, summed over requests; ``unaccounted_share``: over the summed latency)."""
    if not all("unaccounted_s" in r for r in records):
        return {}
    latency = float(np.nansum([r["latency_s"] for r in records]))
    unaccounted = float(np.nansum([r["unaccounted_s"] for r in records]))
    return {"wait_ms_mean": 1000 * float(np.mean([r["wait_s"] for r in records])),
            "probe_ms_mean": 1000 * float(np.mean([r["probe_s"] for r in records])),
            "unaccounted_s": unaccounted,
            "unaccounted_share": unaccounted / latency if latency > 0 else None}


def _accuracy(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    labelled = [r for r in records if r.get("prediction") is not None and r.get("label") is not None]
    compared = [r for r in records if r.get("prediction") is not None and r.get("reference") is not None]
    accuracy = _mean([float(r["prediction"] == r["label"]) for r in labelled])
    reference = _mean([float(r["reference"] == r["label"]) for r in labelled])
    return {
        "accuracy": accuracy,
        "accuracy_reference": reference,
        "accuracy_change": None if accuracy is None or reference is None else accuracy - reference,
        "agreement": _mean([float(r["prediction"] == r["reference"]) for r in compared]),
    }


def _prediction_error(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    pairs = [(r["predicted_latency_s"], r["latency_s"]) for r in records
             if r.get("predicted_latency_s") is not None and np.isfinite(r["predicted_latency_s"])
             and r["latency_s"] > 0]
    if not pairs:
        return {}
    predicted, measured = np.array(pairs).T
    return {"prediction_mape": float(np.mean(np.abs(predicted - measured) / measured)),
            "prediction_bias_ms": float(np.mean(predicted - measured) * 1000)}
