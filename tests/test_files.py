import threading
from pathlib import Path

import pytest

from splitcomp.files import atomic_path, atomic_write_text


def test_concurrent_writers_of_one_file_never_collide_and_leave_a_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "profiles.json"
    texts = [str(i) * 200_000 for i in range(8)]
    errors: list[BaseException] = []
    seen: list[str] = []
    start = threading.Barrier(len(texts) + 1)

    def write(text: str) -> None:
        start.wait()
        try:
            for _ in range(5):
                atomic_write_text(target, text)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def read() -> None:
        start.wait()
        for _ in range(200):
            if target.exists():
                seen.append(target.read_text())

    threads = [threading.Thread(target=write, args=(t,)) for t in texts] + [threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_text() in texts
    assert all(text in texts for text in seen)  # a reader never saw half a file or a mix
    assert [p.name for p in target.parent.iterdir()] == ["profiles.json"]  # no temporary left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "head.pt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as partial:
        partial.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["head.pt"]
