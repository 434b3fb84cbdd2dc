"""``llmac demo``: the whole CPU spine, end to end, in minutes on 2 cores.

1. build the tiny actor (character-level tokenizer + 0.5M-parameter Qwen2) from the task's text;
2. SFT it on step-by-step arithmetic solutions (TRL SFTTrainer);
3. evaluate it on held-out problems with the vLLM engine (greedy accuracy, sampled pass@1 and maj@k).

Every stage writes to ``run_dir`` and is skipped when its output is already there, so a rerun after
an interruption resumes instead of starting over.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trl import SFTConfig

from llmac.config import ModelConfig, parse_config
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import EngineConfig, SamplingConfig, build_engine
from llmac.evaluation import evaluate
from llmac.rewards import answer_keys, math_rewards
from llmac.sft import run_sft

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Where the demo writes and how it evaluates."""

    run_dir: str = field(default="runs/demo", metadata={"help": "Folder for every stage's output."})
    eval_samples: int = field(default=4, metadata={"help": "Samples per held-out problem for pass@1/maj@k."})
    eval_temperature: float = field(default=1.0, metadata={"help": "Temperature of the sampled evaluation."})
    eval_max_new_tokens: int = field(default=96, metadata={"help": "Tokens per evaluation completion."})


def _is_saved_model(path: Path) -> bool:
    """A finished ``save_pretrained`` (single or sharded safetensors), not a half-written folder."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def main(argv: Sequence[str] | None = None) -> dict:
    demo, model_config, task_config, sft_args, engine_config = parse_config(
        [DemoConfig, ModelConfig, TaskConfig, SFTConfig, EngineConfig], argv, prog="llmac demo"
    )
    run_dir = Path(demo.run_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    sft_dir = run_dir / "sft"
    if _is_saved_model(sft_dir):
        logger.info("SFT output found in %s: skipping SFT", sft_dir)
    else:
        sft_args.output_dir = str(sft_dir)
        run_sft(model_config, task_config, sft_args)
    timings["sft_s"] = time.perf_counter() - started

    held_out = load_task(task_config, "eval")
    engine = build_engine(str(sft_dir), engine_config)
    try:
        greedy, _ = evaluate(
            engine,
            held_out,
            SamplingConfig(n=1, temperature=0.0, max_new_tokens=demo.eval_max_new_tokens),
            math_rewards,
            answer_keys,
        )
        sampled, _ = evaluate(
            engine,
            held_out,
            SamplingConfig(
                n=demo.eval_samples,
                temperature=demo.eval_temperature,
                max_new_tokens=demo.eval_max_new_tokens,
                seed=sft_args.seed,
            ),
            math_rewards,
            answer_keys,
        )
    finally:
        engine.close()
    timings["total_s"] = time.perf_counter() - started

    results = {
        "held_out_problems": len(held_out),
        "sft_greedy_accuracy": greedy.pass_at_1,
        "sft_sampled": asdict(sampled),
        "engine": type(engine).__name__,
        **timings,
    }
    (run_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    print("\n== llmac demo ==")
    print(f"SFT'd tiny actor on {len(held_out)} held-out arithmetic problems ({results['engine']}):")
    print(f"  greedy accuracy: {greedy.pass_at_1:.1%}")
    print(f"  sampled (T={demo.eval_temperature}): {sampled.summary()}")
    print(f"  wall time: {timings['total_s'] / 60:.1f} min (SFT {timings['sft_s'] / 60:.1f} min)")
    return results
