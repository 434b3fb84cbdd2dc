"""Export to the Hugging Face Hub: models and datasets as folders the Hub and ``transformers`` read.

``export_model`` turns a saved actor or critic (a plain folder or a LoRA adapter folder) into a
folder that loads with plain ``from_pretrained`` (safetensors only, adapters merged) and carries a
model card saying how llmac trained it. ``export_dataset`` writes a dataset llmac produced (rollouts,
MC step labels) as Parquet shards with a dataset card, the layout ``datasets.load_dataset`` reads
from a Hub repository. ``push_folder`` uploads either to a Hub repository. The ``llmac export``
command runs the three in a row::

    llmac export --source runs/ppo-tiny/actor --output_dir exports/actor --push_to_hub me/tiny-ppo

An export is written beside its destination and renamed into place, so an interrupted export never
leaves a half-written folder that looks finished. It never lands in, on or around its source, and it
replaces an earlier export only with ``--overwrite`` (see :mod:`llmac.outputs`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmac.config import option
from llmac.data.loading import DataError, load_records
from llmac.errors import InputNotFoundError
from llmac.files import write_text_atomically
from llmac.outputs import (
    MARKER,
    PRETRAINED_FILES,
    check_output,
    make_world_readable,
    overwrite_field,
    staged_folder,
)
from llmac.validation import check_fields, require

logger = logging.getLogger(__name__)

# A model folder's files the Hub copy keeps; training state (optimizer, RNG, checkpoints) stays home.
MODEL_FILE_PATTERNS = PRETRAINED_FILES
ROWS_PER_SHARD = 500_000


@dataclass
class ExportConfig:
    """``llmac export``: make a model or dataset folder Hub-ready, optionally push it."""

    source: str = option("", "A saved model folder (plain or LoRA adapter), or a dataset llmac wrote.")
    output_dir: str = option("", "Where the Hub-ready folder is written.")
    kind: str = option(
        "auto",
        "model, dataset or auto (a folder with config.json or an adapter is a model).",
        choices=("auto", "model", "dataset"),
    )
    push_to_hub: str | None = option(
        None, "Hub repository id (user/name) to upload the export to; none: stay local."
    )
    private: bool = option(False, "Create the Hub repository private.")
    token: str | None = option(None, "Hub token (default: the logged-in one, HF_TOKEN).")
    base_model: str | None = option(
        None, "Model card: the model this one was trained from (default: a LoRA adapter's base model)."
    )
    datasets: str | None = option(None, "Model card: comma-separated training dataset ids.")
    commit_message: str = option("Upload with llmac export", "The Hub commit message.")
    overwrite: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, bool(self.source and self.output_dir), "llmac export needs --source and --output_dir")


# -- models ----------------------------------------------------------------------------------------


def export_model(
    source: str | Path,
    output_dir: str | Path,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    repo_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """A ``from_pretrained`` folder of ``source`` with a model card, at ``output_dir``.

    ``repo_id`` names the model in its card (default: the output folder's name). An existing
    ``output_dir`` is replaced only if an earlier llmac command wrote it and ``overwrite`` is set.

    A LoRA adapter folder (``adapter_config.json``) is merged into its base model first. Metrics come
    from the run folder above ``source`` when it has a ``metrics.jsonl`` (``llmac ppo`` writes one).
    """
    source, output_dir = Path(source), Path(output_dir)
    if not source.is_dir():
        raise InputNotFoundError(f"{source}: no such model folder")
    check_output(output_dir, "export", overwrite=overwrite, sources=[source])
    with staged_folder(output_dir, "export") as staging:
        if (source / "adapter_config.json").exists():
            adapter_base = _merge_adapter(source, staging)
            base_model = base_model or adapter_base
        else:
            _copy_model_files(source, staging)
        name = repo_id or output_dir.resolve().name
        card = model_card(staging, source, name, base_model=base_model, datasets=datasets)
        write_text_atomically(staging / "README.md", card)
        make_world_readable(staging)
    return output_dir


def _copy_model_files(source: Path, destination: Path) -> None:
    if not (source / "config.json").exists():
        raise InputNotFoundError(f"{source}: no config.json; not a saved transformers model")
    if not list(source.glob("*.safetensors")):
        bins = sorted(p.name for p in source.glob("*.bin") if p.name != "training_args.bin")
        found = f" (found {', '.join(bins)}: re-save with safe_serialization=True)" if bins else ""
        raise InputNotFoundError(f"{source}: no *.safetensors weights{found}")
    for pattern in MODEL_FILE_PATTERNS:
        for path in source.glob(pattern):
            if path.is_file():
                shutil.copy2(path, destination / path.name)


def _merge_adapter(source: Path, destination: Path) -> str:
    """Merge the LoRA adapter at ``source`` into its base model, save to ``destination``; the base id."""
    from peft import AutoPeftModel, PeftConfig
    from transformers import AutoTokenizer

    base = PeftConfig.from_pretrained(str(source)).base_model_name_or_path
    model = AutoPeftModel.from_pretrained(str(source)).merge_and_unload()
    model.save_pretrained(destination, safe_serialization=True)
    tokenizer_source = source if (source / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(destination)
    return base


def model_card(
    folder: Path, source: Path, name: str, base_model: str | None = None, datasets: Sequence[str] = ()
) -> str:
    """The README.md of an exported model: Hub metadata, how it was trained, its last metrics, usage."""
    from huggingface_hub import ModelCardData

    config = json.loads((folder / "config.json").read_text())
    architecture = (config.get("architectures") or ["a transformers model"])[0]
    is_critic = architecture.endswith("ForTokenClassification")
    run = _run_summary(source.parent)
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="token-classification" if is_critic else "text-generation",
        tags=["llmac", "step-critic" if is_critic else "reasoning"],
        base_model=base_model,
        datasets=list(datasets) or None,
    )
    role = (
        "a step-level critic: one value per step, read at each step's last token"
        if is_critic
        else "a reasoning actor whose answers are written one step per line"
    )
    lines = _card_head(data, name, f"{architecture} trained with llmac: {role}.")
    if run:
        first, last = run["iterations"]
        lines += ["", "## Held-out metrics of the training run", ""]
        lines += [f"| metric | iteration {first} | iteration {last} |", "|---|---|---|"]
        lines += [
            f"| {name} | {'' if before is None else f'{before:.4g}'} | {after:.4g} |"
            for name, (before, after) in run["metrics"].items()
        ]
    loader = "AutoModelForTokenClassification" if is_critic else "AutoModelForCausalLM"
    lines += [
        "",
        "## Use",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {loader}",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        f'model = {loader}.from_pretrained("{name}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _card_head(data, name: str, summary: str) -> list[str]:
    """A card's first lines: the Hub metadata (``ModelCardData``/``DatasetCardData``), title, summary."""
    return ["---", data.to_yaml(), "---", "", f"# {name}", "", summary]


def _run_summary(run_dir: Path) -> dict:
    """Held-out metrics of the llmac run ``run_dir`` at its first and last evaluation, if it logged any.

    Reads ``metrics.jsonl`` (``llmac ppo`` writes one row per iteration, ``eval_*`` on evaluation rows).
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: line %d is not JSON; the model card skips it", path, number)
    evaluated = [row for row in rows if _eval_metrics(row)]
    if not evaluated:
        return {}
    first, last = evaluated[0], evaluated[-1]
    return {
        "iterations": (first.get("iteration"), last.get("iteration")),
        "metrics": {name: (first.get(name), value) for name, value in _eval_metrics(last).items()},
    }


def _eval_metrics(row: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if k.startswith("eval_") and k != "eval_seconds" and isinstance(v, int | float)
    }


# -- datasets --------------------------------------------------------------------------------------


def export_dataset(
    source: str | Path,
    output_dir: str | Path,
    description: str = "",
    repo_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """``source`` (anything :func:`llmac.data.loading.load_records` reads) as Hub Parquet shards + card.

    ``repo_id`` names the dataset in its card (default: the output folder's name). An existing
    ``output_dir`` is replaced only if an earlier llmac command wrote it and ``overwrite`` is set.
    """
    output_dir = Path(output_dir)
    check_output(output_dir, "export", overwrite=overwrite, sources=[source])
    dataset = load_records(source)
    if len(dataset) == 0:
        raise DataError(f"{source}: the dataset has no rows; nothing to export")
    with staged_folder(output_dir, "export") as staging:
        (staging / "data").mkdir()
        shards = max(1, -(-len(dataset) // ROWS_PER_SHARD))
        for index in range(shards):
            shard = dataset.shard(num_shards=shards, index=index, contiguous=True)
            shard.to_parquet(str(staging / "data" / f"train-{index:05d}-of-{shards:05d}.parquet"))
        write_text_atomically(
            staging / "README.md", dataset_card(dataset, repo_id or output_dir.resolve().name, description)
        )
        make_world_readable(staging)
    return output_dir


def dataset_card(dataset, name: str, description: str = "") -> str:
    """The README.md of an exported dataset: the Hub's data-files config, columns, row count."""
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(
        tags=["llmac"],
        configs=[
            {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}
        ],
    )
    columns = [f"| `{name}` | `{feature}` |" for name, feature in dataset.features.items()]
    lines = [
        *_card_head(data, name, description or f"Written by llmac: {len(dataset):,} rows."),
        "",
        "| column | type |",
        "|---|---|",
        *columns,
        "",
    ]
    return "\n".join(lines)


# -- the Hub ---------------------------------------------------------------------------------------


def push_folder(
    folder: str | Path,
    repo_id: str,
    repo_type: str = "model",
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload with llmac export",
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns the commit's URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "README.md").exists():
        raise InputNotFoundError(
            f"{folder}: no README.md; export it with llmac.hub.export_model/export_dataset"
        )
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type=repo_type,
        commit_message=commit_message,
        ignore_patterns=[MARKER],
    )
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("pushed %s to %s (%s)", folder, repo_id, url)
    return url


def push_model(source: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Export the model folder ``source`` (see :func:`export_model`) and push the export; the commit URL."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_model(source, Path(tmp) / Path(source).name, repo_id=repo_id)
        return push_folder(folder, repo_id, private=private, token=token)


# -- the command -----------------------------------------------------------------------------------


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "config.json").exists() or (path / "adapter_config.json").exists())


def run_export(config: ExportConfig) -> Path:
    """Export ``config.source`` to ``config.output_dir`` and push it if asked; returns the folder."""
    source = Path(config.source)
    kind = config.kind if config.kind != "auto" else ("model" if _is_model_folder(source) else "dataset")
    if kind == "model":
        datasets = [d.strip() for d in (config.datasets or "").split(",") if d.strip()]
        folder = export_model(
            source,
            config.output_dir,
            config.base_model,
            datasets,
            repo_id=config.push_to_hub,
            overwrite=config.overwrite,
        )
    else:
        folder = export_dataset(
            source, config.output_dir, repo_id=config.push_to_hub, overwrite=config.overwrite
        )
    print(f"llmac export: wrote the {kind} {source} to {folder.resolve()}")
    if config.push_to_hub:
        push_folder(
            folder,
            config.push_to_hub,
            repo_type=kind,
            private=config.private,
            token=config.token,
            commit_message=config.commit_message,
        )
    return folder


def main(argv: Sequence[str] | None = None) -> Path:
    from llmac.config import parse_config

    (config,) = parse_config([ExportConfig], argv, prog="llmac export")
    return run_export(config)
