import os
import stat

from mnistlab.core.runs import atomic_write


def test_atomic_write_replaces_the_file_with_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "metrics.json"
        target.write_text("old")
        atomic_write(target, "new")
        assert target.read_text() == "new"
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind
    finally:
        os.umask(old)
