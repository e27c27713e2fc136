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
