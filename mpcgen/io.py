"""Atomic file writes: the one place that writes files a reader may open at any moment.

A file is written to a temp file in the target's own folder (so ``os.replace`` is a rename within one file system,
atomic on POSIX and Windows), which replaces the target only once it is complete. On any error, a failing
serialiser included, the temp file is removed and the old target keeps its content.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator


@contextlib.contextmanager
def _replacing(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A temp file next to ``path``, open for writing; on success it replaces ``path``, on any error it is deleted."""
    path = Path(path)
    # No extension at the end of the temp name, so a reader globbing "*.json" never picks up a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with _replacing(path) as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON with a final newline to ``path`` atomically."""
    # Serialised in full first: data JSON cannot encode raises before any file is created.
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document at ``path``."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@contextlib.contextmanager
def replacing_files(folder: str | os.PathLike, *, prefix: str = ".tmp-") -> Iterator[Path]:
    """Yield a fresh temp folder inside ``folder``; on success, move every file written there over ``folder``'s.

    Atomic per file (one ``os.replace`` each, in name order), not for the set. On an error inside the block nothing
    in ``folder`` changes; the temp folder is removed either way.
    """
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=prefix))
    try:
        yield tmp
        for item in sorted(tmp.iterdir()):
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def replacing_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder next to ``target``; on success it replaces the folder ``target`` as a whole.

    Two renames: the old ``target`` moves to ``<target>.old``, the new folder moves in, then ``.old`` is deleted. A
    crash between the renames leaves the previous folder at ``<target>.old`` for readers to fall back to. On an
    error inside the block ``target`` is untouched; the temp folder is removed either way.
    """
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        yield tmp
        old = target.with_name(f"{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["read_json", "replacing_files", "replacing_folder", "write_bytes", "write_json", "write_text"]
