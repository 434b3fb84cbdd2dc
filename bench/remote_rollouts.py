"""Remote against in-process rollouts on the demo's PPO iteration: what `llmac serve` costs on one machine.

The PPO iteration is ``recipes/ppo/tiny_mixed.yaml``'s (the demo's PPO stage: 64 prompts x 8 samples,
<= 96 new tokens, GRPO, old log-probs from the engine), run for ``--iterations`` with ``engine: vllm``
(in the trainer's process) and with ``engine: remote`` (one `llmac serve` process on the same
machine; started before and not timed). Both runs sample the same completions (same seeds), so the
difference is the server's: JSON over HTTP, the trainer and the server competing for the cores, and
the weight sync over HTTP. Figures: mean ``generate_seconds`` and ``sync_seconds`` per iteration
(the first iteration, vLLM's warm-up, is left out), into ``bench/results/remote_rollouts[-quick].json``.

    python bench/remote_rollouts.py --quick
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from helpers.bench_actor import actor_description, actor_folder, add_actor_args
from helpers.results import BenchRecord, add_results_arg, summary_line

from llmac.config import parse_config
from llmac.metrics_log import MetricsLog
from llmac.ppo.trainer import CONFIG_CLASSES, PPOTrainer

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "ppo" / "tiny_mixed.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 iterations per engine instead of 5.")
    parser.add_argument("--iterations", type=int, default=None, help="PPO iterations per engine.")
    parser.add_argument("--port", type=int, default=18500, help="The server's port.")
    add_actor_args(parser, train_steps=40)
    add_results_arg(parser)
    return parser.parse_args()


def ppo_rows(actor: Path, out: Path, iterations: int, engine_flags: list[str]) -> list[dict]:
    argv = ["--config", str(RECIPE), "--model_name_or_path", str(actor), "--output_dir", str(out),
            "--num_iterations", str(iterations), "--eval_every", "0", "--checkpoint_every", "0",
            "--num_train", "2000", "--progress", "false", *engine_flags]  # fmt: skip
    configs = parse_config(CONFIG_CLASSES, argv, prog="bench")
    PPOTrainer(*configs).train()
    return MetricsLog(out).read()


def start_server(actor: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "llmac", "serve", "--model", str(actor), "--port", str(port),
               "--engine_dtype", "float32"]  # fmt: skip
    server = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"llmac serve exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("llmac serve did not start within 900 s")


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    args = parse_args()
    record = BenchRecord("remote_rollouts", args)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    iterations = args.iterations or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        actor = actor_folder(Path(tmp), args)
        rows = {"in_process": ppo_rows(actor, Path(tmp) / "local", iterations, ["--engine", "vllm"])}
        server = start_server(actor, args.port, Path(tmp) / "serve.log")
        try:
            url = f"http://127.0.0.1:{args.port}"
            flags = ["--engine", "remote", "--server_urls", url]
            rows["remote"] = ppo_rows(actor, Path(tmp) / "remote", iterations, flags)
        finally:
            server.terminate()
            server.wait()
    figures = {}
    for name, runs in rows.items():
        timed = runs[1:]  # the first iteration warms vLLM up
        figures[f"{name}_generate_s"] = round(mean([r["generate_seconds"] for r in timed]), 2)
        figures[f"{name}_sync_s"] = round(mean([r["sync_seconds"] for r in timed]), 3)
    figures["generate_ratio"] = round(figures["remote_generate_s"] / figures["in_process_generate_s"], 2)
    same = [r["reward"] for r in rows["remote"]] == [r["reward"] for r in rows["in_process"]]
    print(
        f"workload: {actor_description(args)}; {RECIPE.name}, {iterations} iterations per engine; same rewards: {same}"
    )
    print(summary_line(figures))
    record.save(figures, {"rows": rows})


if __name__ == "__main__":
    main()
