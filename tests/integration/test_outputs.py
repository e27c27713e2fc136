"""Atomic writes: a failure halfway leaves the previous output as it was and no temporary file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bplab.outputs import publish_directory, write_bytes_atomic, write_text_atomic


def test_write_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    write_text_atomic(target, "first\n")
    write_text_atomic(target, "second\n")
    assert target.read_text() == "second\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_write_that_fails_midway_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"previous content")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "text is not bytes")  # type: ignore[arg-type]  # write() raises after mkstemp
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_publish_directory_swaps_in_the_new_content(tmp_path: Path) -> None:
    out = tmp_path / "models" / "v"
    publish_directory(out, lambda d: (d / "a.txt").write_text("1"))
    publish_directory(out, lambda d: (d / "b.txt").write_text("2"))
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    assert [p.name for p in out.parent.iterdir()] == ["v"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_publish_directory_failure_keeps_the_previous_output(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "v"
    publish_directory(out, lambda d: (d / "good.txt").write_text("good"))

    def half_then_fail(staging: Path) -> None:
        (staging / "half.txt").write_text("half")
        raise error

    with pytest.raises(type(error)):
        publish_directory(out, half_then_fail)
    assert [p.name for p in out.iterdir()] == ["good.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["v"]


def _killed_between_the_renames(out: Path) -> None:
    """In a child process: publish a new ``out`` and SIGKILL it right after the first rename."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal, pathlib
        from bplab.outputs import publish_directory
        real = pathlib.Path.rename
        def rename_then_die(self, target):
            result = real(self, target)
            os.kill(os.getpid(), signal.SIGKILL)
            return result
        pathlib.Path.rename = rename_then_die
        publish_directory(pathlib.Path({str(out)!r}), lambda d: (d / "a.txt").write_text("new"))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == -9, result.stderr


def test_a_kill_between_the_renames_keeps_a_complete_version_and_the_next_publish_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "models" / "v"
    publish_directory(out, lambda d: (d / "a.txt").write_text("old"))
    _killed_between_the_renames(out)
    # Killed after the old version was renamed aside and before the new one was renamed in:
    # both complete versions are on disk, the previous one intact.
    left = {p.suffix: (p / "a.txt").read_text() for p in out.parent.iterdir()}
    assert left == {".old": "old", ".tmp": "new"}
    publish_directory(out, lambda d: (d / "a.txt").write_text("newest"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["v"]  # leftovers of the killed writer are gone
    assert (out / "a.txt").read_text() == "newest"


def test_leftover_part_files_of_a_killed_writer_are_removed_on_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    (tmp_path / ".checkpoint.pt.abc123.part").write_bytes(b"half")
    (tmp_path / ".other.pt.abc123.part").write_bytes(b"someone else's")
    write_bytes_atomic(target, b"whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.abc123.part", "checkpoint.pt"]


@pytest.mark.parametrize(("umask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(tmp_path: Path, umask: int, file_mode: int, folder_mode: int) -> None:
    import subprocess
    import sys

    script = ("import pathlib; from bplab.outputs import publish_directory, write_text_atomic; "
              f"root = pathlib.Path({str(tmp_path)!r}); write_text_atomic(root / 'f.json', '1'); "
              "publish_directory(root / 'd', lambda d: (d / 'x.png').write_bytes(b'png'))")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60,
                   preexec_fn=lambda: __import__("os").umask(umask))
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "d").stat().st_mode & 0o777 == folder_mode
    assert (tmp_path / "d" / "x.png").stat().st_mode & 0o777 == file_mode
