"""Readers for real network throughput traces: every supported file becomes one :class:`Trace`.

Each format has a parser that turns the file into *samples* (start time, rate in bit/s, and
optionally RTT) exactly as ``traces/README.md`` defines a sample for that format, so the plain
mean over ``Trace.rates_bps`` is the README's mean. One shared step then makes the samples a
valid step function; its rules (repeated timestamps, gaps, out-of-order and malformed rows,
outages) are documented in ``splitcomp/scenario/README.md``.
"""

from __future__ import annotations

import io
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from splitcomp.configs import project_root
from splitcomp.errors import ConfigError, TraceError
from splitcomp.scenario.trace import Trace

PROJECT_ROOT = project_root()  # where relative paths in the configs start (see splitcomp.configs)
DEFAULT_MAX_GAP_S = 10.0
_SEP = re.compile(r"[,\s]+")
_INNER_SPACE = re.compile(r"\S[ \t]+\S")  # a line holding more than one token
_DETECT_BYTES = 16384
_DETECT_LINES = 50


class TraceWarning(UserWarning):
    """A trace file was read, but some of it was dropped or reshaped (malformed rows, long gaps)."""


@dataclass
class _Samples:
    """What a format parser returns: samples in file order, on the file's own time origin."""

    times: np.ndarray
    rates_bps: np.ndarray
    skipped: int = 0
    rtts_s: np.ndarray | None = None
    end: float | None = None  # end of the last sample when the format records it
    contiguous: bool = False  # each sample lasts until the next by construction: no gaps to close
    step: float | None = None  # the format's nominal sample step (None: the median step of the file)


# --- public API ----------------------------------------------------------------------------
def load_trace(path: str | Path, format: str | None = None, max_gap_s: float | None = DEFAULT_MAX_GAP_S) -> Trace:
    """Read a throughput trace file into a :class:`Trace` (rates bit/s, times from 0).

    ``format`` is one of :data:`FORMATS`, or None to detect it from the file's content. Gaps
    between samples longer than ``max_gap_s`` are closed up (None keeps every gap). Raises
    :class:`TraceError` for a missing, empty, binary, unrecognised or unusable file.
    """
    if max_gap_s is not None and not max_gap_s > 0:
        raise ConfigError(f"max_gap_s must be positive or null, got {max_gap_s!r}")
    file = resolve_path(path)
    text = read_text(file)
    fmt = detect_format(text, file) if format is None else check_format(format)
    samples = _PARSERS[fmt](text, file)
    return _to_trace(samples, file, fmt, max_gap_s)


def trace_window(
    path: str | Path,
    format: str | None = None,
    start: float = 0.0,
    duration: float | None = None,
    speedup: float = 1.0,
    scale: float = 1.0,
    max_gap_s: float | None = DEFAULT_MAX_GAP_S,
) -> Trace:
    """Load a trace and cut the part a run replays: ``duration`` seconds from ``start`` (None =
    to the end of the file; longer windows loop), time compressed by ``speedup`` and every rate
    multiplied by ``scale``. This is the ``_target_`` of ``conf/channel/trace.yaml``."""
    if start < 0:
        raise ConfigError(f"channel.start must be >= 0 seconds, got {start!r}")
    if duration is not None and not duration > 0:
        raise ConfigError(f"channel.duration must be positive or null, got {duration!r}")
    if not speedup > 0:
        raise ConfigError(f"channel.speedup must be positive, got {speedup!r}")
    if not scale > 0:
        raise ConfigError(f"channel.scale must be positive, got {scale!r}")
    trace = load_trace(path, format=format, max_gap_s=max_gap_s)
    if start >= trace.duration and duration is None:
        raise ConfigError(
            f"channel.start={start:g} s is past the end of {trace.name} ({trace.duration:g} s); "
            "use a smaller start or give a duration (the trace loops)"
        )
    if start != 0 or duration is not None or speedup != 1:
        trace = trace.window(start, duration, speedup)
    return trace if scale == 1 else trace.scaled(scale)


def resolve_path(path: str | Path) -> Path:
    """``path`` as given when it exists (or is absolute), else relative to the project root, so
    the shipped configs work from any working directory."""
    given = Path(path).expanduser()
    if given.is_absolute() or given.exists():
        return given
    in_project = PROJECT_ROOT / given
    return in_project if in_project.exists() else given


def check_format(format: str) -> str:
    """The format name if known; a ConfigError listing the known names otherwise."""
    if format not in _PARSERS:
        raise ConfigError(f"unknown trace format {format!r}; use one of {', '.join(FORMATS)} or null to detect it")
    return format


def detect_format(text: str, file: Path | str = "<text>") -> str:
    """Name the format of a trace from its first lines (header names, column count, separator)."""
    lines = content_lines(text[:_DETECT_BYTES])[:_DETECT_LINES]
    header = lines[0].lower() if lines else ""
    if "dl_bitrate" in header and "timestamp" in header:
        return "ucc"
    if "app_throughput" in header and "delivery_time" in header:
        return "lumos_wifi"
    shapes = Counter()
    first_columns: list[float] = []
    for line in lines:
        fields = _SEP.split(line)
        if all(is_number(f) for f in fields):
            shapes[(len(fields), "," in line)] += 1
            first_columns.append(float(fields[0]))
    if not shapes:
        raise TraceError(_unknown_format(file, header))
    (ncols, comma), _ = shapes.most_common(1)[0]
    integral = all(float(v).is_integer() for v in first_columns)
    if ncols == 1 and integral:
        return "mahimahi"
    if ncols == 2 and comma:
        return "multipath"
    if ncols == 2:
        return "lumos5g" if integral else "pensieve"
    if ncols == 6:
        return "ghent"
    raise TraceError(_unknown_format(file, header))


# --- file reading --------------------------------------------------------------------------
def read_text(file: Path) -> str:
    if not file.exists():
        raise TraceError(
            f"trace file {file} not found (looked in the working directory and in {PROJECT_ROOT}); "
            "check the path or set SPLITCOMP_TRACES to the traces folder"
        )
    if not file.is_file():
        raise TraceError(f"trace path {file} is not a file; point it at one trace file")
    data = file.read_bytes()
    if not data.strip():
        raise TraceError(f"trace file {file} is empty; point the path at a file with samples")
    try:
        if b"\x00" in data[:_DETECT_BYTES]:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TraceError(
            f"trace file {file} is binary, not a text trace; give a CSV or text trace (formats: {', '.join(FORMATS)})"
        ) from None


def content_lines(text: str) -> list[str]:
    """Stripped lines, without blank lines and ``#`` comments (neither counts as malformed)."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _unknown_format(file: Path | str, header: str) -> str:
    return (
        f"trace file {file} has no recognised trace format (first line: {header[:60]!r}); "
        f"name it with format= one of {', '.join(FORMATS)}"
    )


def numeric_table(text: str, ncols: int) -> tuple[np.ndarray, int]:
    """Rows of exactly ``ncols`` finite numbers separated by commas or whitespace, as a float
    array of shape (rows, ncols), and the count of other (malformed) rows."""
    if ncols == 1 and "#" not in text and not _INNER_SPACE.search(text):
        try:  # fast path for long single-column files (mahimahi): one token per line
            values = np.array(text.split(), dtype=float)
        except ValueError:
            pass  # some row is not a number: the general path counts it
        else:
            ok = np.isfinite(values)
            return values[ok][:, None], int((~ok).sum())
    lines = pd.Series(content_lines(text), dtype=object)
    if lines.empty:
        return np.empty((0, ncols)), 0
    if ncols == 1:
        values = pd.to_numeric(lines, errors="coerce").to_numpy(dtype=float)[:, None]
        ok = np.isfinite(values[:, 0])
        return values[ok], int((~ok).sum())
    parts = lines.str.split(_SEP, regex=True, expand=True)
    ok = (parts.notna().sum(axis=1) == ncols).to_numpy().copy()
    parts = parts.reindex(columns=range(ncols))
    values = parts.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    ok &= np.isfinite(values).all(axis=1)
    return values[ok], int((~ok).sum())


def _header_csv(text: str, file: Path, fmt: str, required: tuple[str, ...]) -> tuple[pd.DataFrame, int]:
    """A CSV with a header row, every cell a string; rows with too many fields are dropped and counted."""
    bad: list[list[str]] = []
    table = pd.read_csv(io.StringIO(text), dtype=str, engine="python", on_bad_lines=bad.append)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise TraceError(
            f"trace file {file} read as {fmt} has no column {', '.join(missing)}; "
            "name its real format or use format=null to detect it"
        )
    return table, len(bad)


def _numbers(column: pd.Series) -> np.ndarray:
    """A column of strings as floats; blanks, '-' and text become NaN."""
    return pd.to_numeric(column.str.strip(), errors="coerce").to_numpy(dtype=float)


# --- format parsers ------------------------------------------------------------------------
def _parse_ucc(text: str, file: Path) -> _Samples:
    """UCC 4G/5G (G-NetTrack) CSV: one row per sample, ``DL_bitrate`` kbit/s, ``PINGAVG`` ms."""
    table, bad = _header_csv(text, file, "ucc", ("Timestamp", "DL_bitrate"))
    stamps = pd.to_datetime(table["Timestamp"].str.strip(), format="%Y.%m.%d_%H.%M.%S", errors="coerce")
    seconds = (stamps - pd.Timestamp(0)).dt.total_seconds().to_numpy(dtype=float)
    rates = _numbers(table["DL_bitrate"]) * 1e3
    rtts = _numbers(table["PINGAVG"]) / 1e3 if "PINGAVG" in table.columns else None
    ok = np.isfinite(seconds) & np.isfinite(rates)
    rtts = None if rtts is None else rtts[ok]
    return _Samples(seconds[ok], rates[ok], bad + int((~ok).sum()), rtts, step=1.0)


def _parse_mbps_columns(text: str, file: Path) -> _Samples:
    """Two columns ``time_s rate_Mbit/s`` (Lumos5G; Pensieve-cooked Norway 3G)."""
    rows, bad = numeric_table(text, 2)
    return _Samples(rows[:, 0], rows[:, 1] * 1e6, bad)


def _parse_ghent(text: str, file: Path) -> _Samples:
    """UGent 4G raw log: epoch_ms ms_since_start lat lon bytes_since_last ms_since_last."""
    rows, bad = numeric_table(text, 6)
    if len(rows) and rows[0, 4] == 0:  # the logger's first row is a zero-byte start marker
        rows = rows[1:]
    ok = rows[:, 5] > 0
    rows, bad = rows[ok], bad + int((~ok).sum())
    end_s = rows[:, 1] / 1e3
    interval_s = rows[:, 5] / 1e3
    end = end_s[-1] if len(rows) else None
    return _Samples(end_s - interval_s, rows[:, 4] * 8 / interval_s, bad, end=end, contiguous=True)


def _parse_mahimahi(text: str, file: Path) -> _Samples:
    """mahimahi: one ms timestamp per 1500-byte delivery opportunity; rate per full 1-s bin."""
    rows, bad = numeric_table(text, 1)
    stamps = rows[:, 0]
    ok = (stamps >= 0) & (stamps == np.floor(stamps))
    stamps, bad = stamps[ok].astype(np.int64), bad + int((~ok).sum())
    if len(stamps) == 0:
        return _Samples(np.empty(0), np.empty(0), bad)
    bins = int(stamps.max() // 1000)
    if bins == 0:
        raise TraceError(f"trace file {file} (mahimahi) spans less than one full 1-s bin; it needs >= 1 s of timestamps")
    counts = np.bincount(stamps // 1000, minlength=bins + 1)[:bins]  # the partial last bin is dropped
    return _Samples(np.arange(bins, dtype=float), counts * 1500.0 * 8.0, bad, end=float(bins), contiguous=True)


def _parse_multipath(text: str, file: Path) -> _Samples:
    """Aydin et al. multipath CSV, no header: ``time_s,BytesPerSecond`` at 1-s steps."""
    rows, bad = numeric_table(text, 2)
    return _Samples(rows[:, 0], rows[:, 1] * 8.0, bad, step=1.0)


def _parse_lumos_wifi(text: str, file: Path) -> _Samples:
    """Lumos (ICT) chunk log: one sample per chunk, ``app_throughput`` kbit/s for ``delivery_time`` s."""
    table, bad = _header_csv(text, file, "lumos_wifi", ("app_throughput", "delivery_time"))
    rates = _numbers(table["app_throughput"]) * 1e3
    widths = _numbers(table["delivery_time"])
    ok = np.isfinite(rates) & np.isfinite(widths) & (widths > 0)
    rates, widths = rates[ok], widths[ok]
    starts = np.concatenate([[0.0], np.cumsum(widths)[:-1]]) if len(widths) else widths
    end = float(widths.sum()) if len(widths) else None
    return _Samples(starts, rates, bad + int((~ok).sum()), end=end, contiguous=True)


_PARSERS: dict[str, Callable[[str, Path], _Samples]] = {
    "ucc": _parse_ucc,
    "lumos5g": _parse_mbps_columns,
    "pensieve": _parse_mbps_columns,
    "ghent": _parse_ghent,
    "mahimahi": _parse_mahimahi,
    "multipath": _parse_multipath,
    "lumos_wifi": _parse_lumos_wifi,
}
FORMATS: tuple[str, ...] = tuple(_PARSERS)


# --- samples -> step function ----------------------------------------------------------------
def _to_trace(samples: _Samples, file: Path, fmt: str, max_gap_s: float | None) -> Trace:
    times, rates, rtts = samples.times, samples.rates_bps, samples.rtts_s
    skipped = samples.skipped
    if len(times) == 0:
        raise TraceError(
            f"trace file {file} has no valid {fmt} rows ({skipped} malformed); check the file or name its format"
        )
    if np.any(rates < 0):
        i = int(np.argmax(rates < 0))
        raise TraceError(f"trace file {file} has a negative data rate ({rates[i]:g} bit/s in sample {i + 1}); rates must be >= 0")
    in_order = times >= np.concatenate([[-np.inf], np.maximum.accumulate(times)[:-1]])
    skipped += int((~in_order).sum())
    times, rates = times[in_order], rates[in_order]
    rtts = None if rtts is None else rtts[in_order]
    step = samples.step or _nominal_step(times)
    times = _spread_repeats(times, step)
    times, end, closed = _close_gaps(times, samples.end, step, None if samples.contiguous else max_gap_s)
    origin = times[0]
    duration = (times[-1] + step if end is None else end) - origin
    if skipped:
        warnings.warn(f"trace file {file}: skipped {skipped} malformed or out-of-order rows", TraceWarning, stacklevel=3)
    if closed:
        warnings.warn(
            f"trace file {file}: closed {closed} gaps longer than {max_gap_s:g} s (later samples moved earlier)",
            TraceWarning,
            stacklevel=3,
        )
    try:
        return Trace(
            times=times - origin,
            rates_bps=rates,
            duration=duration,
            rtts_s=_fill_rtts(rtts),
            name=file.name,
            format=fmt,
            source=str(file),
            skipped_rows=skipped,
        )
    except ValueError as exc:  # a file whose times defeat the rules above
        raise TraceError(f"trace file {file} does not give a valid step function ({exc}); check its time column") from None


def _nominal_step(times: np.ndarray) -> float:
    """The file's usual sample spacing: the median positive step (1 s if there is none)."""
    steps = np.diff(times)
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else 1.0


def _spread_repeats(times: np.ndarray, step: float) -> np.ndarray:
    """Rows sharing a timestamp are spread evenly over [t, t + min(step, next time - t)).

    Every row stays a sample of its own (the README counts each row), and the step function
    stays strictly increasing: two rows logged in one second hold half a second each.
    """
    distinct, first, counts = np.unique(times, return_index=True, return_counts=True)
    if len(distinct) == len(times):
        return times
    span = np.minimum(step, np.append(np.diff(distinct), step))
    group = np.repeat(np.arange(len(distinct)), counts)
    rank = np.arange(len(times)) - first[group]
    return distinct[group] + rank * span[group] / counts[group]


def _close_gaps(
    times: np.ndarray, end: float | None, step: float, max_gap_s: float | None
) -> tuple[np.ndarray, float | None, int]:
    """Gaps up to ``max_gap_s`` hold the previous sample; a longer one shrinks to one nominal step."""
    if max_gap_s is None or len(times) < 2:
        return times, end, 0
    gaps = np.diff(times)
    long = gaps > max_gap_s
    if not long.any():
        return times, end, 0
    shift = np.concatenate([[0.0], np.cumsum(np.where(long, gaps - step, 0.0))])
    return times - shift, None if end is None else end - shift[-1], int(long.sum())


def _fill_rtts(rtts: np.ndarray | None) -> np.ndarray | None:
    """RTT per sample: the last measured value holds until the next one (the first measured
    value covers the start); None when the file has no RTT at all."""
    if rtts is None:
        return None
    rtts = np.where(np.isfinite(rtts) & (rtts >= 0), rtts, np.nan)
    if np.isnan(rtts).all():
        return None
    return pd.Series(rtts).ffill().bfill().to_numpy(dtype=float)
