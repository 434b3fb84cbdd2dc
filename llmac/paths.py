"""Telling a local path from a Hugging Face Hub id, so a mistyped folder fails at once, offline.

``from_pretrained("runs/nope/sft")`` first looks for the folder, then asks the Hub (retrying for
tens of seconds without a network) and ends in an error about repo-id syntax. Every input llmac loads
goes through :func:`check_input_path` first: a name that looks local and does not exist raises
:class:`~llmac.errors.InputNotFoundError` naming the path. Standard library only, so the CLI can
check its flags before importing torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from llmac.errors import InputNotFoundError

# A Hub repo id: "name" or "namespace/name", word characters, '-' and '.', no "--" or "..", at most 96.
_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[\w\-.]{1,96}(/[\w\-.]{1,96})?$")
_LOCAL_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")
# Folders llmac's docs and recipes write to: never Hub namespaces, even before they exist.
_LOCAL_ROOTS = ("runs", "exports")
_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".yaml", ".yml", ".csv", ".txt", ".safetensors")


def looks_local(name_or_path: str | os.PathLike) -> bool:
    """True when ``name_or_path`` can only mean a local file or folder, never a Hub repo id.

    That is: it exists; or it starts with ``./``, ``../``, ``/`` or ``~``; or it is not a valid repo
    id (``runs/x/sft`` has two slashes); or it ends in a file suffix; or its first part is a folder
    that exists here or one of llmac's output roots (``runs/``, ``exports/``).
    """
    text = os.fspath(name_or_path)
    if not text:
        return False
    if Path(text).expanduser().exists() or text in (".", ".."):
        return True
    if text.startswith(_LOCAL_PREFIXES) or os.path.isabs(text):
        return True
    if not _HUB_ID.match(text) or text.lower().endswith(_FILE_SUFFIXES):
        return True
    first, sep, _ = text.partition("/")
    if not sep and os.sep != "/":
        first, sep, _ = text.partition(os.sep)
    return bool(sep) and (first in _LOCAL_ROOTS or Path(first).is_dir())


def check_input_path(
    name_or_path: str | os.PathLike, what: str, flag: str | None = None, source: str | None = None
) -> None:
    """Raise :class:`InputNotFoundError` when ``name_or_path`` looks local and does not exist.

    ``what`` says what was expected ("model folder", "dataset"); ``flag`` names the option it came
    from, or ``source`` says where it was written (``"recipe.yaml: init_from:"``). A Hub id (or any
    name that is not clearly local) passes: loading it is the Hub's business.
    """
    text = os.fspath(name_or_path)
    if not looks_local(text) or Path(text).expanduser().exists():
        return
    source = f"{source} " if source else f"--{flag} " if flag else ""
    path = Path(text).expanduser()
    where = "" if path.is_absolute() else f" under {Path.cwd()}"
    nearest = _nearest_existing_parent(path)
    found = f"{nearest}/ exists" if nearest else "none of its parent folders exist"
    raise InputNotFoundError(
        f"{source}{text}: no such {what}{where} ({found}); fix the path, or first run the command that writes it"
    )


def check_model_path(
    name_or_path: str | os.PathLike,
    what: str = "model folder",
    flag: str | None = None,
    source: str | None = None,
) -> None:
    """:func:`check_input_path`, and a local folder must hold a saved model (``config.json``)."""
    check_input_path(name_or_path, what, flag, source)
    path = Path(os.fspath(name_or_path)).expanduser()
    if (
        path.is_dir()
        and not (path / "config.json").is_file()
        and not (path / "adapter_config.json").is_file()
    ):
        where = source or (f"--{flag}" if flag else "")
        found = sorted(p.name for p in path.iterdir())[:5]
        raise InputNotFoundError(
            f"{where} {path}: not a saved {what}, it has no config.json (it holds {found or 'nothing'}); "
            "give the folder that `save_pretrained` (llmac sft, critic train, ppo) wrote".lstrip()
        )


def _nearest_existing_parent(path: Path) -> str | None:
    for parent in path.parents:
        if str(parent) not in ("", ".") and parent.is_dir():
            return str(parent)
    return None
