"""Shared plumbing of the Hydra entry points: user errors end in one sentence, not a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from splitcomp.configs import config_dir
from splitcomp.errors import SplitcompError

CONF_DIR = str(config_dir())  # Hydra's config_path; users add their own with --config-dir
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

F = TypeVar("F", bound=Callable[..., Any])


def user_errors_are_one_line(func: F) -> F:
    """Wrap a task body: a SplitcompError (also one raised inside Hydra's instantiate) is printed
    as ``error: <sentence>`` and the process exits with status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SplitcompError as exc:
            _exit_with(exc)
        except InstantiationException as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, SplitcompError):
                _exit_with(cause)
            raise

    return wrapper  # type: ignore[return-value]


def _exit_with(exc: BaseException) -> None:
    print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, whatever the cause says
    sys.exit(2)


def config_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python containers (for params and artifacts)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
