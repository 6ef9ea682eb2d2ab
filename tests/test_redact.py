import io
import stat

import mlflow
import pytest
from omegaconf import OmegaConf

from splitcomp.redact import (
    REDACTED,
    RedactSecrets,
    is_secret_key,
    redact,
    redact_logs,
    redact_text,
    save_private_config,
)
from splitcomp.track.tracker import Tracker

SECRET = "hunter2-but-much-longer"


@pytest.mark.parametrize(("key", "secret"), [
    ("server.auth_secret", True), ("tracking.token", True), ("db.password", True), ("api_key", True),
    ("server.auth_secret_file", False), ("server.auth_secret_env", False), ("server.tls.key", False),
    ("model.name", False), ("tokens_per_second", False),
])
def test_secret_keys_are_told_by_their_last_part(key, secret):
    assert is_secret_key(key) is secret


def test_nested_values_lists_and_overrides_are_redacted():
    config = {"server": {"auth_secret": SECRET, "auth_secret_file": "/run/secret", "port": 7000},
              "overrides": [f"server.auth_secret={SECRET}", "model.name=resnet18", f"+db.password={SECRET}"],
              "dirname": f"a=1,x.token={SECRET},b=2"}
    clean = redact(config)
    assert SECRET not in str(clean)
    assert clean["server"] == {"auth_secret": REDACTED, "auth_secret_file": "/run/secret", "port": 7000}
    assert clean["overrides"][1] == "model.name=resnet18" and clean["dirname"] == f"a=1,x.token={REDACTED},b=2"
    assert redact({"auth_secret": None}) == {"auth_secret": None}  # unset stays visibly unset
    assert redact_text(f"splitcomp-run server.auth_secret={SECRET} requests=5") == \
        f"splitcomp-run server.auth_secret={REDACTED} requests=5"


def test_saved_configs_are_redacted_and_private(tmp_path):
    path = save_private_config(OmegaConf.create({"server": {"auth_secret": SECRET, "host": "h"}}), tmp_path / "c.yaml")
    assert SECRET not in path.read_text() and OmegaConf.load(path).server.host == "h"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    save_private_config({"a": 1}, path)  # an existing file is replaced, mode included
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_mlflow_params_and_tags_are_redacted(monkeypatch):
    logged = {}
    monkeypatch.setattr(mlflow, "log_params", logged.update)
    monkeypatch.setattr(mlflow, "set_tags", logged.update)
    tracker = Tracker(run=None)
    tracker.log_params({"server": {"auth_secret": SECRET, "auth_secret_file": "/run/secret"}})
    tracker.set_tags({"splitcomp.overrides": f"server.auth_secret={SECRET}"})
    assert SECRET not in str(logged)
    assert logged["server.auth_secret"] == REDACTED and logged["server.auth_secret_file"] == "/run/secret"


def test_hydras_saved_files_are_rewritten_redacted_and_private(tmp_path):
    hydra_dir = tmp_path / ".hydra"
    hydra_dir.mkdir()
    OmegaConf.save({"server": {"auth_secret": SECRET}}, hydra_dir / "config.yaml")
    OmegaConf.save({"hydra": {"overrides": {"task": [f"server.auth_secret={SECRET}"]}}}, hydra_dir / "hydra.yaml")
    OmegaConf.save([f"server.auth_secret={SECRET}"], hydra_dir / "overrides.yaml")
    config = OmegaConf.create({"hydra": {"output_subdir": ".hydra", "runtime": {"output_dir": str(tmp_path)},
                                         "mode": None, "sweep": {"dir": str(tmp_path)}}})
    RedactSecrets().on_job_start(config)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        path = hydra_dir / name
        assert SECRET not in path.read_text() and REDACTED in path.read_text(), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_log_lines_are_redacted_even_after_logging_is_reconfigured():
    import logging.config

    factory = logging.getLogRecordFactory()
    stream = io.StringIO()
    try:
        redact_logs()
        redact_logs()  # once is enough
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,  # as Hydra's launcher does
                                   "handlers": {"out": {"class": "logging.StreamHandler", "stream": stream}},
                                   "loggers": {"launcher": {"handlers": ["out"], "level": "INFO"}}})
        logging.getLogger("launcher").info("\t#0 : policy=static +db.password=%s", SECRET)
    finally:
        logging.setLogRecordFactory(factory)
    assert SECRET not in stream.getvalue() and f"+db.password={REDACTED}" in stream.getvalue()
