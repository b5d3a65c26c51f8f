"""Atomic outputs: a file or folder appears whole or not at all; unwritable paths are one OutputError."""

from __future__ import annotations

from pathlib import Path

import pytest

from r1v.atomic import atomic_dir, atomic_write_text
from r1v.errors import OutputError


def test_write_text_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_write_under_a_file_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(OutputError, match="blocker/report.json: cannot write"):
        atomic_write_text(tmp_path / "blocker" / "report.json", "{}")


def test_folder_appears_only_when_the_block_succeeds(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "1"

    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:  # a failed rewrite keeps the old folder
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("writer failed")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folder left behind

    with atomic_dir(final) as tmp:  # a successful rewrite replaces it whole
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
