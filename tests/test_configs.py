import subprocess

from splitcomp import configs


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_the_source_commit_is_the_checkouts_head_and_says_when_files_changed(tmp_path, monkeypatch):
    monkeypatch.delenv("SPLITCOMP_COMMIT", raising=False)
    git(tmp_path, "init", "-q")
    (tmp_path / "model.py").write_text("A = 1\n")
    git(tmp_path, "add", "model.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "first")
    monkeypatch.setattr(configs, "project_root", lambda: tmp_path)
    head = git(tmp_path, "rev-parse", "HEAD")
    assert configs.source_commit() == head
    (tmp_path / "model.py").write_text("A = 2\n")
    assert configs.source_commit() == head + "+uncommitted changes"


def test_a_copy_names_its_commit_through_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "project_root", lambda: tmp_path)  # a folder git knows nothing of
    monkeypatch.delenv("SPLITCOMP_COMMIT", raising=False)
    assert configs.source_commit() == "unknown"
    monkeypatch.setenv("SPLITCOMP_COMMIT", "abc123")
    assert configs.source_commit() == "abc123"


def test_the_environment_wins_over_a_copys_own_history(monkeypatch):
    monkeypatch.setenv("SPLITCOMP_COMMIT", "abc123")  # a lent machine's copy has a history of its own
    assert configs.source_commit() == "abc123"
