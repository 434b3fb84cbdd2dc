"""Writing small files so that a reader (or a rerun after a kill) never sees half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Run ``write(stream)`` into a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX filesystems: ``path`` holds either its old content or the whole new
    one. The temporary name is unique, so concurrent writers never share a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """``path.write_text(text)`` (UTF-8) through :func:`write_atomically`."""
    return write_atomically(path, lambda stream: stream.write(text.encode("utf-8")))
