"""Where the shipped Hydra configs live: the one place in the code that knows.

The repository keeps them in its top-level ``conf/``; a built wheel carries that folder inside the
package as ``splitcomp/conf`` (pyproject.toml maps the subpackage ``splitcomp.conf`` onto it).
So a source checkout (editable install or ``PYTHONPATH``) finds them beside the package and an
installed wheel inside it, whatever the working directory.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import subprocess
from pathlib import Path

from splitcomp.errors import ConfigError


@functools.cache
def config_dir() -> Path:
    """The folder holding ``config.yaml`` and one folder per config group."""
    package = Path(str(importlib.resources.files("splitcomp")))
    candidates = (package / "conf", package.parent / "conf")  # installed wheel, source checkout
    for folder in candidates:
        if (folder / "config.yaml").is_file():
            return folder
    raise ConfigError(f"the splitcomp configs are missing (looked in {' and '.join(map(str, candidates))}); "
                      "reinstall the package")


def project_root() -> Path:
    """The folder that relative paths in the configs (``conf/server_load/examples/...``,
    ``../shared/traces/...``, ``outputs/...``) start from when the working directory does not hold
    them: the repository in a checkout, the package's folder in an installed wheel."""
    return config_dir().parent


def source_commit() -> str:
    """The commit of the project's checkout (``+uncommitted changes`` when tracked files differ
    from it), for results that name the code that made them. A copy whose git history is not the
    project's, or that has none (a lent machine), names it through the environment variable
    ``SPLITCOMP_COMMIT``, which wins when set; ``unknown`` when nothing says."""
    if os.environ.get("SPLITCOMP_COMMIT"):
        return os.environ["SPLITCOMP_COMMIT"]
    root = str(project_root())
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+uncommitted changes" if dirty else "")
