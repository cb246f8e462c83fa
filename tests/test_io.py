"""Atomic writes (mpcgen.io): content round-trips, and a failure at any point leaves the old file and no temp file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mpcgen import io


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_round_trip_and_leave_only_the_target(tmp_path):
    io.write_text(tmp_path / "a.txt", "héllo\n")
    io.write_bytes(tmp_path / "b.bin", b"\x00\x01\xff")
    io.write_json(tmp_path / "c.json", {"b": [1, 2.5, None], "a": "x"})
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01\xff"
    # Indented, sorted keys, final newline: the format every JSON file of ours has had.
    assert (tmp_path / "c.json").read_text() == json.dumps({"a": "x", "b": [1, 2.5, None]}, indent=2,
                                                           sort_keys=True) + "\n"
    assert io.read_json(tmp_path / "c.json") == {"a": "x", "b": [1, 2.5, None]}
    assert _entries(tmp_path) == ["a.txt", "b.bin", "c.json"]


def test_overwrite_replaces_content(tmp_path):
    path = tmp_path / "state.json"
    io.write_json(path, {"step": 1})
    io.write_json(path, {"step": 2})
    assert io.read_json(path) == {"step": 2}
    assert _entries(tmp_path) == ["state.json"]


def test_failing_json_serialiser_leaves_old_content_and_no_temp_file(tmp_path):
    path = tmp_path / "state.json"
    io.write_json(path, {"step": 1})
    with pytest.raises(TypeError):
        io.write_json(path, {"step": 2, "bad": object()})
    assert io.read_json(path) == {"step": 1}
    assert _entries(tmp_path) == ["state.json"]


def test_failure_while_writing_removes_the_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "plot.png"
    io.write_bytes(path, b"old")
    with pytest.raises(TypeError):
        io.write_bytes(path, "not bytes")  # type: ignore[arg-type]  # fails inside the open temp file
    # A failing rename (e.g. the target became a folder) must not leave the temp file either.
    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        io.write_text(path, "new")
    assert path.read_bytes() == b"old"
    assert _entries(tmp_path) == ["plot.png"]


def test_temp_names_do_not_match_the_target_extension(tmp_path, monkeypatch):
    # A reader globbing "*.json" while a write is under way must not pick up the half-written file.
    seen = []
    real = os.replace
    monkeypatch.setattr(io.os, "replace", lambda src, dst: (seen.append(Path(src).name), real(src, dst)))
    io.write_json(tmp_path / "point.json", [])
    assert len(seen) == 1 and seen[0].startswith(".point.json.") and not seen[0].endswith(".json")


def test_replacing_files_moves_each_file_or_nothing(tmp_path):
    (tmp_path / "config.json").write_text("old")
    with io.replacing_files(tmp_path) as tmp:
        (tmp / "config.json").write_text("new")
        (tmp / "model.safetensors").write_bytes(b"w")
    assert (tmp_path / "config.json").read_text() == "new"
    assert _entries(tmp_path) == ["config.json", "model.safetensors"]
    with pytest.raises(RuntimeError):
        with io.replacing_files(tmp_path) as tmp:
            (tmp / "config.json").write_text("half")
            raise RuntimeError("serialiser failed")
    assert (tmp_path / "config.json").read_text() == "new"
    assert _entries(tmp_path) == ["config.json", "model.safetensors"]


def test_replacing_folder_swaps_the_whole_folder(tmp_path):
    target = tmp_path / "resume"
    with io.replacing_folder(target) as tmp:
        (tmp / "state.json").write_text("1")
        (tmp / "extra").write_text("x")
    with io.replacing_folder(target) as tmp:
        (tmp / "state.json").write_text("2")
    assert _entries(target) == ["state.json"] and (target / "state.json").read_text() == "2"
    with pytest.raises(RuntimeError):
        with io.replacing_folder(target) as tmp:
            (tmp / "state.json").write_text("3")
            raise RuntimeError("save failed")
    assert (target / "state.json").read_text() == "2"
    assert _entries(tmp_path) == ["resume"]


def test_checkpoint_keeps_exporting_the_json_helpers():
    from mpcgen.checkpoint import read_json, write_json

    assert write_json is io.write_json and read_json is io.read_json
