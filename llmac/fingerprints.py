"""Content fingerprints of models, datasets and llmac's own code, and "stage done" stamps.

A cached result (a demo stage, a bench's cached arm, a shard store) is reused only when the inputs it
was made from are the same: same files, not merely the same path.

What a fingerprint reads. Every file of the folder is hashed by its content (SHA-256): config,
generation config, tokenizer, dataset state. Only a bulk file (weights: ``.safetensors``, ``.bin``,
...; rows: ``.arrow``, ``.parquet``) larger than ``content_limit`` (256 MiB by default) is keyed by
its name, size and ``st_mtime_ns`` plus, for safetensors, its header (tensor names, dtypes, shapes,
offsets). Why: hashing a 15 GB checkpoint costs ~15-30 s of disk reads on every check, while a tiny
or small model (every test, the demo) is hashed in milliseconds and so is fully content-keyed.
Consequence for big files: copying a folder with ``cp -p`` / ``rsync -a`` (mtimes kept) keeps its
fingerprint; a plain ``cp`` gives the copy a new mtime, hence a new fingerprint, so work keyed by it
is redone (the safe side). A changed big file keeps its fingerprint only if it was rewritten with the
same size and header and its mtime was then restored by hand. Small files are content-keyed, so a
copy of any kind keeps their fingerprint.

Hidden files (``.llmac-stage.json``, markers, temporary files) are never part of a fingerprint.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import llmac
from llmac.files import write_text_atomically

CONTENT_LIMIT = 256 * 2**20
"""Weight and row files up to this many bytes are fingerprinted by content; larger ones by size + mtime."""

STAGE_STAMP = ".llmac-stage.json"
"""The file in a finished artifact that records the key of the inputs it was made from."""

# Files that may be too big to hash on every check: weights and dataset rows.
_BULK_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".arrow", ".parquet")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


# -- fingerprints ----------------------------------------------------------------------------------
def model_fingerprint(path: str | Path, content_limit: int = CONTENT_LIMIT) -> str:
    """Fingerprint of a model folder's top-level files (config, weights, tokenizer, generation config).

    Subfolders (``checkpoint-*`` of a training run) do not change the saved model and are left out.
    A name that is not a local folder is a Hub id or a spec (``"tiny"``): it is keyed by that name
    and, for a Hub id found in the local cache, by the cached snapshot's commit.
    """
    folder = Path(path)
    if not folder.is_dir():
        return _digest({"name": str(path), "hub_commit": _cached_hub_commit(str(path))})
    return _digest({"model": _folder_entries(folder, content_limit, recursive=False)})


def dataset_fingerprint(path: str | Path, content_limit: int = CONTENT_LIMIT) -> str:
    """Fingerprint of a ``save_to_disk`` folder (a Dataset, or a DatasetDict with split subfolders).

    The random ``_fingerprint`` that ``datasets`` writes into ``state.json`` is left out: the same
    rows saved twice get the same fingerprint.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no dataset folder at {folder}")
    return _digest({"dataset": _folder_entries(folder, content_limit, recursive=True)})


def path_fingerprint(path: str | Path, content_limit: int = CONTENT_LIMIT) -> str:
    """Fingerprint of whatever ``path`` holds: a model folder, any other folder, or one file."""
    path = Path(path)
    if path.is_file():
        return _digest({"file": _file_entry(path, content_limit)})
    if (path / "config.json").is_file():
        return model_fingerprint(path, content_limit)
    return dataset_fingerprint(path, content_limit)


@functools.cache
def code_version() -> str:
    """llmac's version plus a hash of its package source: any code change makes a new version."""
    package = Path(llmac.__file__).parent
    digest = hashlib.sha256()
    for file in sorted(package.rglob("*.py")):
        digest.update(file.relative_to(package).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return f"{llmac.__version__}+{digest.hexdigest()[:16]}"


def inputs_key(**inputs) -> str:
    """One key for a stage's inputs (fingerprints, settings; JSON-able values) and llmac's code version."""
    return _digest({"inputs": inputs, "code_version": code_version()})


def engine_model_fingerprint(engine) -> str | None:
    """Fingerprint of the weights an engine samples from, or None when they cannot be known.

    An engine built from a folder (``engine.model_path``) is keyed by :func:`model_fingerprint` of
    that folder; an engine whose in-memory ``model`` is a torch module (an HFEngine given a model
    object, or after ``load_weights``) by a hash of its tensors; anything else (a test double, a
    vLLM engine after ``load_weights``) is unknown.
    """
    model_path = getattr(engine, "model_path", None)
    if model_path is not None:
        return model_fingerprint(model_path)
    model = getattr(engine, "model", None)
    if hasattr(model, "state_dict"):
        return _state_dict_fingerprint(model.state_dict())
    return None


def _state_dict_fingerprint(state_dict) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return "weights:" + digest.hexdigest()


def reward_fingerprint(reward_fn) -> dict:
    """What identifies a reward function's scores: its registered name, qualified name and source.

    A ``functools.partial`` adds its bound arguments; a callable object its class source and
    attributes. Source that cannot be read (a REPL lambda) is left out, so only the name counts.
    """
    from llmac.rewards.registry import get_reward_fn, registered_rewards

    params: dict = {"partial": []}
    while isinstance(reward_fn, functools.partial):  # outermost first
        params["partial"].append([repr(reward_fn.args), repr(sorted(reward_fn.keywords.items()))])
        reward_fn = reward_fn.func
    target = reward_fn if inspect.isfunction(reward_fn) or inspect.ismethod(reward_fn) else type(reward_fn)
    if target is not reward_fn:
        params["attributes"] = (
            repr(sorted(vars(reward_fn).items())) if hasattr(reward_fn, "__dict__") else None
        )
    names = [name for name in registered_rewards() if get_reward_fn(name) is reward_fn]
    try:
        source = hashlib.sha256(inspect.getsource(target).encode()).hexdigest()
    except (OSError, TypeError):
        source = None
    qualified = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
    return {"registered_as": names, "qualified_name": qualified, "source_sha256": source, **params}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _folder_entries(folder: Path, content_limit: int, recursive: bool) -> list[list]:
    return [
        [file.relative_to(folder).as_posix(), _file_entry(file, content_limit)]
        for file in _visible_files(folder, recursive)
    ]


def _visible_files(folder: Path, recursive: bool) -> Iterator[Path]:
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            yield entry
        elif recursive and entry.is_dir():
            yield from _visible_files(entry, recursive)


def _file_entry(file: Path, content_limit: int) -> dict:
    stat = file.stat()
    if file.name == "state.json":  # a save_to_disk state: drop its random fingerprint
        state = _json_object(file)
        if state is not None:
            state.pop("_fingerprint", None)
            return {"state": state}
    if stat.st_size <= content_limit or file.suffix not in _BULK_SUFFIXES:
        return {"sha256": _sha256(file)}
    entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if file.suffix == ".safetensors":
        try:
            header = json.dumps(_safetensors_header(file), sort_keys=True)
        except (OSError, ValueError):
            header = "unreadable"  # a damaged file, which is_complete_model rejects
        entry["header_sha256"] = hashlib.sha256(header.encode()).hexdigest()
    return entry


def _json_object(file: Path) -> dict | None:
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        for block in iter(lambda: stream.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_hub_commit(repo_id: str) -> str | None:
    """The commit of ``repo_id``'s snapshot in the local Hugging Face cache, if any (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id ("tiny", a missing local path): nothing cached
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


# -- completeness ----------------------------------------------------------------------------------
def is_complete_model(path: str | Path) -> bool:
    """Whether ``path`` holds a whole saved model: config, every weight file intact, a loadable tokenizer.

    Weights are checked without loading them: each safetensors header must parse and its tensors
    must end exactly at the end of the file (a truncated file fails); a sharded checkpoint's index
    must name only shards that are present and intact; a ``.bin`` must be a whole zip archive.
    The tokenizer is loaded with ``AutoTokenizer`` (tens of milliseconds for a local folder).
    """
    folder = Path(path)
    try:
        json.loads((folder / "config.json").read_text())
        weights = _weight_files(folder)
        if not weights or not all(_intact_weight_file(file) for file in weights):
            return False
        return _tokenizer_loads(folder)
    except (OSError, ValueError):
        return False


def _weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / shard for shard in shards]
    safetensors = sorted(folder.glob("*.safetensors"))
    return safetensors or sorted(folder.glob("pytorch_model*.bin"))  # not training_args.bin


def _intact_weight_file(file: Path) -> bool:
    if not file.is_file():
        return False
    if file.suffix == ".safetensors":
        header = _safetensors_header(file)
        header_bytes = _safetensors_header_length(file)
        data_end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        return 8 + header_bytes + data_end == file.stat().st_size
    import zipfile

    return zipfile.is_zipfile(file)


def _safetensors_header_length(file: Path) -> int:
    with open(file, "rb") as stream:
        raw = stream.read(8)
    if len(raw) != 8:
        raise ValueError(f"{file}: not a safetensors file (shorter than 8 bytes)")
    (length,) = struct.unpack("<Q", raw)
    if length > file.stat().st_size - 8:
        raise ValueError(f"{file}: safetensors header longer than the file")
    return length


def _safetensors_header(file: Path) -> dict:
    length = _safetensors_header_length(file)
    with open(file, "rb") as stream:
        stream.seek(8)
        header = json.loads(stream.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{file}: safetensors header is not a JSON object")
    return header


def _tokenizer_loads(folder: Path) -> bool:
    if not (folder / "tokenizer_config.json").is_file():
        return False
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return False
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # any failure to load means the folder is not usable as it stands
        return False
    return True


def is_complete_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a ``save_to_disk`` folder that ``load_from_disk`` reads, every row of it."""
    from datasets import load_from_disk

    folder = Path(path)
    if not folder.is_dir():
        return False
    try:
        loaded = load_from_disk(str(folder))
        for part in loaded.values() if hasattr(loaded, "values") else [loaded]:
            part.data.validate()  # the memory-mapped Arrow tables: a truncated file fails here or above
    except Exception:  # datasets/pyarrow raise many kinds for a damaged folder
        return False
    return True


# -- stage stamps ----------------------------------------------------------------------------------
def write_stage_stamp(directory: str | Path, key: str, state: str = "done", **details) -> Path:
    """Record that the artifact in ``directory`` was made from inputs with ``key``.

    ``state`` is ``"done"`` once the artifact is complete (renamed into place) or ``"running"``
    when a stage starts writing there (a rerun with the same key may then resume it); ``details``
    (JSON-able) are kept for a human reading the stamp.
    """
    if state not in ("done", "running"):
        raise ValueError(f"stage stamp state must be 'done' or 'running', got {state!r}")
    stamp = {"key": key, "state": state, "code_version": code_version(), **details}
    return write_text_atomically(Path(directory) / STAGE_STAMP, json.dumps(stamp, indent=2, default=str))


def read_stage_stamp(directory: str | Path) -> dict | None:
    """The stamp in ``directory`` (``key``, ``state``, ...), or None if it has no readable stamp."""
    try:
        stamp = json.loads((Path(directory) / STAGE_STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and isinstance(stamp.get("key"), str) else None


def stage_done(
    directory: str | Path, key: str, kind: str | None = None, parts: Sequence[str] = (".",)
) -> bool:
    """Whether ``directory`` holds a complete artifact stamped ``done`` with ``key``.

    ``kind`` is ``"model"`` or ``"dataset"``; None guesses it per artifact (``config.json`` means a
    model, ``state.json``/``dataset_dict.json`` a dataset). ``parts`` are the artifacts inside
    ``directory`` that must each be complete (``("actor", "critic")`` for a PPO run).
    """
    stamp = read_stage_stamp(directory)
    if stamp is None or stamp["key"] != key or stamp.get("state") != "done":
        return False
    return all(_is_complete(Path(directory) / part, kind) for part in parts)


def _is_complete(folder: Path, kind: str | None) -> bool:
    if kind is None:
        if (folder / "config.json").is_file():
            kind = "model"
        elif (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
            kind = "dataset"
        else:
            return False
    if kind == "model":
        return is_complete_model(folder)
    if kind == "dataset":
        return is_complete_dataset(folder)
    raise ValueError(f"stage_done kind must be 'model', 'dataset' or None, got {kind!r}")
