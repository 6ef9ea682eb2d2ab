import re

from splitcomp import configs


def test_the_source_commit_is_the_checkouts_head(monkeypatch):
    monkeypatch.delenv("SPLITCOMP_COMMIT", raising=False)
    assert re.fullmatch(r"[0-9a-f]{40}(\+uncommitted changes)?", configs.source_commit())


def test_a_copy_names_its_commit_through_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITCOMP_COMMIT", "abc123")
    assert configs.source_commit() == "abc123"  # wins over a copy's own history
    monkeypatch.setattr(configs, "project_root", lambda: tmp_path)  # a folder git knows nothing of
    monkeypatch.delenv("SPLITCOMP_COMMIT", raising=False)
    assert configs.source_commit() == "unknown"
