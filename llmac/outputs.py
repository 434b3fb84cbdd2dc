"""Output folders: which ones a command may write, and final saves that a kill cannot leave half-done.

Every folder an llmac command creates carries a marker file, ``.llmac.json`` (the command, llmac's
version, when, whether the output is complete). :func:`check_output` lets a command write a folder
only when it is absent or empty, or is that command's own resumable output, or carries the marker and
the user passed ``--overwrite``; and never where it would land in, on or around one of its inputs.
The check reads the disk only, so commands run it before any model loads.

A final save is written into a hidden sibling ``.<name>.tmp-<token>`` and moved into place
(:func:`staged_folder`, :func:`publish_folder`). An existing folder is swapped with the new one in
one ``renameat2(RENAME_EXCHANGE)`` where Linux has it, so the path always holds the old folder or the
new one; elsewhere the old folder is renamed aside first and put back by the next run if it was
killed in between. Only then is the old copy deleted, and only if llmac wrote it.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llmac import __version__
from llmac.config import option
from llmac.errors import OutputError
from llmac.files import write_text_atomically

logger = logging.getLogger(__name__)

MARKER = ".llmac.json"
# What a plain ``from_pretrained`` folder is made of: weights, config, tokenizer.
PRETRAINED_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "added_tokens.json",
)
# A model folder's own files: a final save replaces them; everything else in a training output
# (checkpoints, logs, metrics) is carried over into the new folder.
MODEL_FILES = (
    *PRETRAINED_FILES,
    "pytorch_model*.bin",
    "adapter_config.json",
    "adapter_model.*",
    "training_args.bin",
    MARKER,
)
_SHOWN_ENTRIES = 4


def overwrite_field() -> bool:
    """The ``overwrite`` field every command that writes an output folder declares."""
    return option(
        False,
        "Replace an output that an earlier llmac command wrote (like transformers' old "
        "overwrite_output_dir). Without it such an output is refused, unless it is this command's own "
        "unfinished or resumable run, which is resumed. What llmac did not write, and the command's "
        "own inputs, are never replaced.",
    )


@dataclass
class OutputConfig:
    """What a command may do to an output folder that already exists."""

    overwrite: bool = overwrite_field()


# -- the marker ------------------------------------------------------------------------------------


def read_marker(folder: str | Path) -> dict | None:
    """The marker of a folder llmac wrote, or None (no marker, or not one of llmac's)."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "command" in marker else None


def write_marker(folder: str | Path, command: str, complete: bool = False) -> None:
    """Mark ``folder`` as written by ``llmac <command>`` (``complete`` once its final save is in)."""
    marker = {
        "command": command,
        "llmac_version": __version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": complete,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    write_text_atomically(Path(folder) / MARKER, json.dumps(marker, indent=2) + "\n")


# -- may this command write there? -----------------------------------------------------------------


def check_output(
    path: str | Path,
    command: str,
    overwrite: bool = False,
    sources: Iterable[str | Path | None] = (),
    resumable: Callable[[Path], bool] | None = None,
) -> str:
    """Raise :class:`OutputError` unless ``llmac <command>`` may write ``path``; else say how.

    Returns ``"new"`` (absent or empty), ``"resume"`` (the command's own unfinished run, or a finished
    one that ``resumable`` says holds resumable state: checkpoints), or ``"replace"`` (an llmac folder
    and ``overwrite``). ``sources`` are the command's inputs; local ones may be neither ``path``, nor
    inside it, nor around it. ``resumable`` is given by commands that resume in their output.
    """
    path = Path(path)
    flag = f"`llmac {command}`"
    _refuse_sources(path, sources, flag)
    recover_folder(path)
    if not path.exists() and not path.is_symlink():
        return "new"
    if not path.is_dir():
        raise OutputError(
            f"{path} is a file, not a folder: {flag} writes a folder there; choose another path"
        )
    entries = _entries(path)
    if not entries:
        return "new"
    marker = read_marker(path)
    if marker is None:
        raise OutputError(
            f"{path} holds files llmac did not write ({_listing(entries)}): {flag} will not replace them, "
            "even with --overwrite; choose another output folder, or empty this one yourself"
        )
    own = marker["command"] == command and resumable is not None
    if own and not overwrite and (not marker.get("complete") or resumable(path)):
        return "resume"
    if overwrite:
        return "replace"
    state = "a finished" if marker.get("complete") else "an unfinished"
    raise OutputError(
        f"{path} already holds {state} output of `llmac {marker['command']}` ({_listing(entries)}): "
        "pass --overwrite to replace it, or choose another output folder"
    )


def check_file_output(path: str | Path, command: str, sources: Iterable[str | Path | None] = ()) -> None:
    """Raise :class:`OutputError` unless ``llmac <command>`` may write the single file ``path``."""
    path = Path(path)
    _refuse_sources(path, sources, f"`llmac {command}`")
    if path.is_dir():
        raise OutputError(f"{path} is a folder: `llmac {command}` writes a file; give a file name")


def _refuse_sources(path: Path, sources: Iterable[str | Path | None], flag: str) -> None:
    target = path.resolve()
    for source in sources:
        if not source or not Path(source).exists():
            continue  # a Hub id, "tiny", or a missing input (its loader says so)
        origin = Path(source).resolve()
        if target == origin:
            where = "is"
        elif target.is_relative_to(origin):
            where = "is inside"
        elif origin.is_relative_to(target):
            where = "contains"
        else:
            continue
        raise OutputError(
            f"{path} {where} {source}, an input of {flag}: writing there would destroy what the command "
            "reads; choose an output folder outside it"
        )


def _entries(folder: Path) -> list[str]:
    """What a folder holds, without llmac's marker (nor its temporary file while being written)."""
    names = (p.name for p in folder.iterdir())
    return sorted(n for n in names if n != MARKER and not n.startswith(f".{MARKER}."))


def _listing(entries: list[str]) -> str:
    shown = ", ".join(entries[:_SHOWN_ENTRIES])
    return shown + (f" and {len(entries) - _SHOWN_ENTRIES} more" if len(entries) > _SHOWN_ENTRIES else "")


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun``/``accelerate launch`` job (or a plain process), before any setup."""
    return int(os.environ.get("RANK", "0")) == 0


def claim_output(path: str | Path, command: str) -> Path:
    """Create ``path`` (after :func:`check_output`) and mark it as ``command``'s; main process only."""
    path = Path(path)
    if is_main_process():
        path.mkdir(parents=True, exist_ok=True)
        if read_marker(path) is None:
            write_marker(path, command)
        remove_leftovers(path)
    return path


def prepare_output(
    path: str | Path,
    command: str,
    overwrite: bool = False,
    sources: Iterable[str | Path | None] = (),
    resumable: Callable[[Path], bool] | None = None,
) -> Path:
    """Check ``path`` and claim the folder the command works in; returns that folder.

    That is ``path`` itself, except when an llmac folder is replaced (``--overwrite``): then the new
    run works in the hidden sibling ``.<name>.replacing`` (resumed by a rerun after a kill), and the
    final save (:func:`save_final_folder` with ``work``, or :func:`finish_output`) swaps the new output
    in at the end, so the old one stays whole until the new one is.
    """
    path = Path(path)
    state = check_output(path, command, overwrite, sources, resumable)
    if state != "replace":
        return claim_output(path, command)
    work = path.parent / f".{path.name}.replacing"
    marker = read_marker(work)
    if work.exists() and any(work.iterdir()) and (marker is None or marker["command"] != command):
        raise OutputError(f"{work} holds files that are not an unfinished `llmac {command}` run; remove it")
    return claim_output(work, command)


def finish_output(work: str | Path, path: str | Path, command: str) -> Path:
    """Mark the command's output complete; a replacing run's folder takes the old one's place."""
    work, path = Path(work), Path(path)
    if not is_main_process():
        return path
    if work != path:
        publish_folder(work, path, command)
    else:
        write_marker(path, command, complete=True)
    return path


def check_work_folder(path: str | Path, stamp: str, sources: Iterable[str | Path | None] = ()) -> None:
    """Raise :class:`OutputError` unless ``path`` can hold a command's resumable work (shards).

    That is: absent, empty, or a folder llmac made for that work (its marker, or the ``stamp`` file
    the shard store writes first).
    """
    path = Path(path)
    _refuse_sources(path, sources, "llmac")
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputError(f"{path} is a file; llmac keeps its finished shards there: move it away")
    entries = _entries(path)
    if entries and read_marker(path) is None and not (path / stamp).is_file():
        raise OutputError(
            f"{path} holds files llmac did not write ({_listing(entries)}); llmac keeps its finished "
            "shards there: move them away or choose another output folder"
        )


def claim_work_folder(
    output: str | Path, command: str, overwrite: bool, sources: Iterable[str | Path | None]
) -> Path:
    """Check ``output`` and claim its sibling ``<name>.partial``, where a resumable job keeps its finished
    shards until ``output`` is saved (then :func:`remove_own_folder` it); returns that folder."""
    output, sources = Path(output), list(sources)
    work = output.with_name(output.name + ".partial")
    check_output(output, command, overwrite=overwrite, sources=sources)
    check_work_folder(work, MARKER, sources=sources)
    return claim_output(work, command)


def remove_own_folder(path: str | Path, command: str, stamp: str | None = None) -> None:
    """Delete the work folder ``path`` if llmac made it (its marker, or ``stamp``); else keep it."""
    path = Path(path)
    if not path.exists():
        return
    if read_marker(path) is not None or (stamp is not None and (path / stamp).is_file()):
        shutil.rmtree(path)
    else:
        logger.warning("kept %s after `llmac %s`: llmac did not make it", path, command)


# -- atomic final saves ----------------------------------------------------------------------------


def shared_token() -> str:
    """A fresh random token, the same on every process of a distributed job (rank 0's)."""
    token = [uuid.uuid4().hex[:12]]
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(token, src=0)
    except ImportError:
        pass
    return token[0]


def staging_path(final: Path, token: str) -> Path:
    return final.parent / f".{final.name}.tmp-{token}"


@contextmanager
def staged_folder(
    final: str | Path,
    command: str,
    is_main: bool = True,
    wait: Callable[[], object] | None = None,
    carry_from: str | Path | None = None,
) -> Iterator[Path]:
    """A fresh folder to write the new ``final`` into, published by :func:`publish_folder` on success.

    With ``wait`` (the job's barrier), every process of a distributed job enters it and gets the same
    folder; ``is_main`` says which one creates, publishes or, on an error, removes it. Without it,
    one process writes alone.
    """
    final = Path(final)
    staging = staging_path(final, shared_token() if wait is not None else uuid.uuid4().hex[:12])
    wait = wait or (lambda: None)
    if is_main:
        remove_leftovers(final)
        staging.mkdir(parents=True)
        write_marker(staging, command)
    wait()
    try:
        yield staging
        wait()
    except BaseException:
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if is_main:
        publish_folder(staging, final, command, carry_from=carry_from)
    wait()


def save_final_folder(
    final: str | Path,
    command: str,
    save: Callable[[Path], object],
    is_main: bool = True,
    wait: Callable[[], object] | None = None,
    work: str | Path | None = None,
) -> Path:
    """Run ``save(folder)`` into a staging folder and publish it at ``final``.

    Every process of a distributed job calls it, with ``wait`` its barrier (see :func:`staged_folder`).

    ``work`` is the folder a training run kept its checkpoints and logs in (``final`` itself, or the
    ``.replacing`` sibling of :func:`prepare_output`): they move into the new folder with it, and a
    ``.replacing`` folder is removed once the new ``final`` is in place.
    """
    final = Path(final)
    with staged_folder(final, command, is_main, wait, carry_from=work) as staging:
        save(staging)
    if is_main and work is not None and Path(work) != final:
        remove_own_folder(work, command)
    return final


def has_trainer_checkpoint(folder: Path) -> bool:
    """A ``transformers`` Trainer output with a ``checkpoint-<step>`` to resume from."""
    return any(p.is_dir() for p in folder.glob("checkpoint-*"))


def publish_folder(
    staging: str | Path, final: str | Path, command: str, carry_from: str | Path | None = None
) -> Path:
    """Put the complete folder ``staging`` at ``final`` in one rename; delete what it replaced.

    ``carry_from`` (usually ``final`` itself, a training output) contributes everything that is not
    a model file (checkpoints, logs) by hard link, so the swap keeps them. The folder at ``final``,
    if any, must be llmac's (a marker in it or its parent folder): anything else raises
    :class:`OutputError` and nothing moves.
    """
    staging, final = Path(staging), Path(final)
    recover_folder(final)
    old_exists = final.exists() and (not final.is_dir() or any(final.iterdir()))
    if old_exists and (
        not final.is_dir() or (read_marker(final) is None and read_marker(final.parent) is None)
    ):
        raise OutputError(f"{final} holds files llmac did not write; the new output stays in {staging}")
    if carry_from is not None and Path(carry_from).is_dir():
        _link_tree(Path(carry_from), staging, top_level_skip=MODEL_FILES)
    write_marker(staging, command, complete=True)
    _fsync_tree(staging)
    return move_into_place(staging, final, command)


def move_into_place(staging: str | Path, final: str | Path, command: str) -> Path:
    """Rename the complete folder ``staging`` to ``final``; an old ``final`` (llmac's: the caller
    checked) is swapped out in the same step, then deleted.

    Without ``renameat2`` the old folder is renamed aside first; :func:`recover_folder` puts it back
    if a kill comes before the new one is in place.
    """
    staging, final = Path(staging), Path(final)
    if not final.exists() or (final.is_dir() and not any(final.iterdir())):
        os.rename(staging, final)  # replaces an empty folder in the same step
    elif _exchange(staging, final):
        shutil.rmtree(staging)  # now the old folder
    else:
        aside = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:12]}"
        if read_marker(final) is None:
            write_marker(final, command, complete=True)  # so recover_folder knows it as llmac's
        os.rename(final, aside)
        os.rename(staging, final)
        shutil.rmtree(aside)
    _fsync_dir(final.parent)
    return final


def recover_folder(final: str | Path) -> None:
    """Put back an old folder that a kill left renamed aside (no ``renameat2``) with nothing at ``final``."""
    final = Path(final)
    if final.exists() or not final.parent.is_dir():
        return
    aside = [p for p in final.parent.glob(f".{final.name}.old-*") if read_marker(p) is not None]
    if aside:
        try:
            os.rename(max(aside, key=lambda p: p.stat().st_mtime), final)
            logger.warning("restored %s: an earlier run was killed while replacing it", final)
        except OSError:
            pass  # another process of the job restored it first


def remove_leftovers(final: str | Path) -> None:
    """Delete the temporary siblings of ``final`` that killed llmac runs left (llmac's, by name and marker)."""
    final = Path(final)
    for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):
        for leftover in final.parent.glob(pattern):
            marker = read_marker(leftover)
            if marker is None:
                continue  # not llmac's
            # A complete one is an old folder swapped out (or one a kill stopped short of moving in);
            # an incomplete one may still be written by a live process.
            dead = marker.get("host") == socket.gethostname() and not _alive(marker.get("pid"))
            if not (marker.get("complete") or dead):
                continue
            if pattern.endswith(".old-*") and not final.exists():
                continue  # recover_folder's
            shutil.rmtree(leftover, ignore_errors=True)
            logger.info("removed %s, left by a killed llmac run", leftover)


def _alive(pid) -> bool:
    """Whether process ``pid`` of this machine still runs (unknown: assume it does)."""
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # an old kernel, or a filesystem without exchange
    raise OSError(error, os.strerror(error), str(b))


def _link_tree(source: Path, destination: Path, top_level_skip: tuple[str, ...] = ()) -> None:
    """Hard-link (or copy, where links fail) ``source``'s files into ``destination``, keeping what is there."""
    for entry in source.iterdir():
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in top_level_skip):
            continue
        target = destination / entry.name
        if entry.is_symlink():
            if not target.exists():
                os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            target.mkdir(exist_ok=True)
            _link_tree(entry, target)
        elif not target.exists():
            try:
                os.link(entry, target)
            except OSError:
                shutil.copy2(entry, target)


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, and the folders themselves, to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            descriptor = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems cannot sync a directory
    finally:
        os.close(descriptor)


# -- permissions -----------------------------------------------------------------------------------


def make_world_readable(folder: str | Path) -> None:
    """Files ``0644`` and folders ``0755`` minus the umask, as ``save_pretrained`` leaves its own."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644 & ~umask)
