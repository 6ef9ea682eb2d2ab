"""Keeping secrets out of what a run writes: MLflow params and tags, saved configs, Hydra's files,
log lines.

Secrets do not belong in the config at all (``server.auth_secret_file`` names a file instead), but
a user may still pass one: any key whose last part names a secret (``auth_secret``, ``password``,
``token``, ...; not ``*_file``, ``*_env`` or ``*_path``, which only say where a secret is) is
replaced by ``<redacted>`` in everything the run saves or logs, and config files are written
mode 0600.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from splitcomp.files import atomic_path

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"(secret|password|passphrase|passwd|token|credentials?|api_?key|private_?key)$", re.I)
# ``key=value`` in a command-line override or a string built from overrides (``a=1,b.token=x``)
_ASSIGNMENT = re.compile(r"(?P<key>[+~]{0,2}[A-Za-z_][\w.\-/]*)=(?P<value>[^,\s]*)")
_HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def is_secret_key(key: str) -> bool:
    """Whether a (dotted) config key names a secret value."""
    return bool(_SECRET_NAME.search(str(key).rsplit(".", 1)[-1]))


def redact_text(text: str) -> str:
    """``key=value`` assignments in ``text`` with secret keys have their value redacted."""
    def replace(match: re.Match) -> str:
        key = match.group("key").lstrip("+~")
        return f"{match.group('key')}={REDACTED}" if is_secret_key(key) and match.group("value") else match.group(0)

    return _ASSIGNMENT.sub(replace, text)


def redact(value: Any) -> Any:
    """A copy of plain containers (dicts, lists, strings) with every secret value redacted."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_key(str(k)) and v not in (None, "") else redact(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def save_private_config(config: Any, path: str | Path) -> Path:
    """Write ``config`` (a DictConfig or plain dict) as YAML, secrets redacted, readable only by
    its owner."""
    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=False)
    text = OmegaConf.to_yaml(OmegaConf.create(redact(config)))
    return write_private_text(path, text)


def write_private_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically with mode 0600 (an older file is replaced whole)."""
    with atomic_path(path) as partial:  # a fresh temporary file: created 0600 by mkstemp
        os.chmod(partial, 0o600)
        partial.write_text(text, encoding="utf-8")
    return Path(path)


def redact_logs() -> None:
    """From now on, every log record of this process has its ``key=value`` secrets redacted as it
    is made (a launcher logs each job's overrides, for one). A record factory, unlike a handler's
    filter, outlives Hydra's reconfiguring of the logging handlers."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "redacts", False):
        return

    def make_redacted_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a malformed record is the handler's to report)
            return record
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return record

    make_redacted_record.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_redacted_record)


class RedactSecrets(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): secrets redacted in the log from the start of
    a run or sweep, and in the files Hydra saves for a job (``.hydra/config.yaml``,
    ``hydra.yaml``, ``overrides.yaml``) and a sweep (``multirun.yaml``), which are rewritten mode
    0600. Hydra writes a job's files just before the job starts, the sweep's before its first job."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        redact_logs()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        redact_logs()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        redact_logs()
        subdir = config.hydra.get("output_subdir")
        if subdir is not None:
            folder = Path(str(config.hydra.runtime.output_dir)) / str(subdir)
            for name in _HYDRA_FILES:
                _rewrite(folder / name)
        if config.hydra.get("mode") == RunMode.MULTIRUN:
            _rewrite(Path(str(config.hydra.sweep.dir)) / "multirun.yaml")


def _rewrite(path: Path) -> None:
    if path.exists():
        save_private_config(OmegaConf.load(path), path)
