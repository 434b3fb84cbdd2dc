"""Rollout throughput: VLLMEngine against HFEngine on the same tiny model, prompts and sampling.

The model is llmac's tiny Qwen2 (character tokenizer, untied embeddings) trained for a few dozen
next-token steps on arithmetic solutions, so samples look like solutions and end with EOS at
realistic, varying lengths (no ``ignore_eos``): both engines run the public ``generate`` exactly as
a trainer would. HF gets its fastest CPU setting: all sequences in one ``generate`` call (see
``--hf-batch-size``). Each engine gets a warm-up call, then timed calls alternate between the
engines and each engine's best run counts (the 2 cores are shared, so single runs are noisy).
Training and engine start-up are not timed. The last line printed is ``ratio=<vllm/hf>``.

The default 256-token budget is a reasoning rollout's: most samples stop long before the longest
one, which HF's static batch keeps decoding (padded) while vLLM's continuous batching does not. At
``--max-new-tokens 64`` this 0.5M-parameter model is pure per-step overhead and full-batch HF is
faster than vLLM on 2 CPU cores.

    python bench/rollout_throughput.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_actor import add_actor_args, build_actor

from llmac.data import arithmetic_dataset
from llmac.engines import SamplingConfig
from llmac.engines.hf import HFEngine


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer timed repeats (about a minute in all).")
    parser.add_argument("--prompts", type=int, default=64, help="Distinct prompts.")
    parser.add_argument("--n", type=int, default=4, help="Samples per prompt.")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        help="Token budget per sample (reasoning rollouts are long).",
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--repeats", type=int, default=None, help="Timed calls per engine (default 3, quick 2)."
    )
    add_actor_args(parser, train_steps=40)
    parser.add_argument(
        "--hf-batch-size", type=int, default=None, help="Sequences per HF generate (default: all)."
    )
    parser.add_argument(
        "--sampling-seed", type=int, default=None, help="SamplingConfig.seed (default None, as in rollouts)."
    )
    return parser.parse_args()


def timed_tokens_per_second(engine, prompts: list[str], sampling: SamplingConfig) -> tuple[float, int]:
    start = time.perf_counter()
    groups = engine.generate(prompts, sampling)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for group in groups for c in group)
    return tokens / seconds, tokens


def main() -> None:
    args = parse_args()
    wall = time.perf_counter()
    from llmac.engines.vllm import VLLMEngine

    repeats = args.repeats or (2 if args.quick else 3)
    sampling = SamplingConfig(
        n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.sampling_seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        build_actor(model_dir, args)

        started = time.perf_counter()
        vllm_engine = VLLMEngine(model_dir, dtype="float32", max_model_len=512, seed=args.seed)
        print(f"vLLM engine started in {time.perf_counter() - started:.1f}s")
        hf_engine = HFEngine(
            model_dir, dtype="float32", batch_size=args.hf_batch_size or args.prompts * args.n
        )
        tokenizer = hf_engine.tokenizer
        questions = arithmetic_dataset(args.prompts, seed=args.seed + 2)["question"]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            for q in questions
        ]
        try:
            for name, engine in (("vllm", vllm_engine), ("hf", hf_engine)):
                started = time.perf_counter()
                engine.generate(prompts, sampling)
                print(f"{name} warm-up call: {time.perf_counter() - started:.1f}s")
            rates: dict[str, list[float]] = {"vllm": [], "hf": []}
            for _ in range(repeats):
                for name, engine in (("vllm", vllm_engine), ("hf", hf_engine)):
                    rate, tokens = timed_tokens_per_second(engine, prompts, sampling)
                    rates[name].append(rate)
                    print(f"{name}: {tokens} tokens at {rate:,.0f} tokens/s")
        finally:
            vllm_engine.close()

    best = {name: max(values) for name, values in rates.items()}
    print(
        f"workload: {args.prompts} prompts x n={args.n} x <= {args.max_new_tokens} new tokens, "
        f"temperature {args.temperature}; HF batch {hf_engine.batch_size}, torch threads {torch.get_num_threads()}"
    )
    for name in ("vllm", "hf"):
        print(f"{name} best of {repeats}: {best[name]:,.0f} tokens/s")
    print(f"wall time {time.perf_counter() - wall:.1f}s")
    print(f"ratio={best['vllm'] / best['hf']:.2f}")


if __name__ == "__main__":
    main()
