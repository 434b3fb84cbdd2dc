"""Atomic small-file writes: a failed write leaves the old file and no debris."""

from __future__ import annotations

import pytest

from llmac.files import write_atomically, write_text_atomically


def test_write_replaces_content_and_creates_parents(tmp_path):
    path = tmp_path / "deep" / "metrics.json"
    write_text_atomically(path, "first")
    write_text_atomically(path, "sécond")
    assert path.read_text(encoding="utf-8") == "sécond"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("old")

    def half_then_crash(stream):
        stream.write(b"half of the new pa")
        raise KeyboardInterrupt  # a kill in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, half_then_crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]
