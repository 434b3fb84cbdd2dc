"""The remote rollout engine and `llmac serve`: the same samples as in-process, spread over servers
or not, weights synced over HTTP, and a dead or silent server as a clear error, never a hang.

Fake servers (stdlib HTTP, no vLLM) check the client's sharding, seeds, retries and timeouts exactly;
real `llmac serve` processes on the tiny actor check the rest. vLLM on CPU is slow to start, so the
module shares one server (A), and one test starts, kills and restarts a second (B).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file

from llmac.config import ModelConfig
from llmac.data.tasks import TaskConfig
from llmac.engines import EngineConfig
from llmac.engines.base import SamplingConfig
from llmac.engines.gpu_transfer import json_safe_update, layer_rounds, round_key
from llmac.engines.remote import RemoteEngine, _split
from llmac.errors import ConfigError, LlmacError
from llmac.metrics_log import MetricsLog
from llmac.models import load_tokenizer
from llmac.ppo.config import PPOConfig
from llmac.ppo.trainer import PPOTrainer
from llmac.steps import DEFAULT_DELIMITER

REPO = Path(__file__).resolve().parents[1]
SERVER_START_S = 600  # vLLM's start on a loaded 2-core machine


# ------------------------------------------------------------------------------- fake servers


class FakeServer:
    """`llmac serve`'s API with canned answers: completion ``[seed % 50 + 1, len(prompt)]`` per sample
    ``k`` (seed + k), or silence on /sample when ``hang``. Records the /sample requests it got."""

    def __init__(self, hang: bool = False) -> None:
        self.hang, self.requests, self.chunks = hang, [], []
        self.weights = "base"
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self._answer({"status": "ok", "instance": "fake", "weights": fake.weights, "delimiter": DEFAULT_DELIMITER,
                              "dtype": "torch.float32", "world_size": 1})  # fmt: skip

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/weights/stage":
                    fake.chunks.append(load(body))
                    return self._answer({})
                request = json.loads(body)
                if self.path == "/weights/commit":
                    fake.weights = request["weights"]
                    return self._answer({})
                fake.requests.append(request)
                if request["weights"] != fake.weights:
                    return self._answer({"error": "other weights"}, status=409)
                if fake.hang:
                    fake.release.wait(30)
                    return
                n = request["sampling"]["n"]
                groups = [
                    [
                        {
                            "token_ids": [(seed + k) % 50 + 1, len(prompt)],
                            "logprobs": [-1.0, -2.0],
                            "finish_reason": "length",
                        }
                        for k in range(n)
                    ]  # fmt: skip
                    for prompt, seed in zip(request["prompts"], request["seeds"], strict=True)
                ]
                self._answer({"completions": groups})

            def _answer(self, answer: dict, status: int = 200) -> None:
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fakes():
    made: list[FakeServer] = []
    yield lambda **kwargs: made.append(FakeServer(**kwargs)) or made[-1]
    for fake in made:
        fake.close()


PROMPTS = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15]]


def test_prompts_are_split_contiguously_with_sizes_one_apart():
    assert _split(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert _split(list(range(5)), 3) == [[0, 1], [2, 3], [4]]
    assert _split([7, 9], 3) == [[7], [9], []]


def test_samples_and_seeds_do_not_depend_on_the_number_of_servers(tiny_actor_dir, fakes):
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=2, seed=100)
    one_server = fakes()
    one = RemoteEngine([one_server.url], tiny_actor_dir).generate(PROMPTS, sampling)
    three_servers = [fakes() for _ in range(3)]
    three = RemoteEngine([f.url for f in three_servers], tiny_actor_dir).generate(PROMPTS, sampling)
    # Prompt i's sample k has seed 100 + 2i + k, as the in-process engine gives it.
    expected = [[[(100 + 2 * i + k) % 50 + 1, len(p)] for k in range(2)] for i, p in enumerate(PROMPTS)]
    assert [[c.token_ids for c in group] for group in one] == expected
    assert [[c.token_ids for c in group] for group in three] == expected
    assert [r["seeds"] for f in three_servers for r in f.requests] == [[100, 102], [104, 106], [108]]
    assert all(r["weights"] == "base" for f in three_servers for r in f.requests)


def test_a_silent_server_fails_within_the_timeout_or_hands_its_share_on(tiny_actor_dir, fakes):
    silent, working = fakes(hang=True), fakes()
    sampling = SamplingConfig(n=1, max_new_tokens=2, seed=0)
    alone = RemoteEngine([silent.url], tiny_actor_dir, timeout_s=1.5)
    start = time.monotonic()
    with pytest.raises(LlmacError, match=rf"no rollout server answered /sample \({silent.url}: no answer to "
                                         r"/sample within 1.5 s \(server_timeout_s\)"):  # fmt: skip
        alone.generate(PROMPTS, sampling)
    assert time.monotonic() - start < 10
    # With another server the silent one's share moves there: the same samples as one good server.
    both = RemoteEngine([silent.url, working.url], tiny_actor_dir, timeout_s=1.5)
    expected = RemoteEngine([working.url], tiny_actor_dir).generate(PROMPTS, sampling)
    for _ in range(2):
        got = both.generate(PROMPTS, sampling)
        assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in expected]
    # Alone it got every prompt; with the other server its first share, which then moved on. It
    # answers /health but hung: it gets nothing more until it restarts (a new instance).
    assert [r["seeds"] for r in silent.requests] == [[0, 1, 2, 3, 4], [0, 1, 2]]


def test_unreachable_servers_and_bad_settings_are_refused_in_one_line(tiny_actor_dir, fakes):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(LlmacError, match=rf"http://127.0.0.1:{port}: unreachable on /health"):
        RemoteEngine([f"http://127.0.0.1:{port}"], tiny_actor_dir, timeout_s=2)
    with pytest.raises(ConfigError, match="start it with --delimiter"):
        RemoteEngine([fakes().url], tiny_actor_dir, delimiter="\n\n")
    with pytest.raises(ConfigError, match="engine=remote needs server_urls"):
        EngineConfig(engine="remote")
    with pytest.raises(ConfigError, match="http://host:port"):
        RemoteEngine(["localhost:8000"], tiny_actor_dir)


def test_a_tied_models_sync_sends_its_head_and_a_restarted_server_gets_it_again(tmp_path, fakes):
    from llmac.models import TinyModelConfig, build_tiny_model, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(["1+2=3", "4*5=20"])
    model = build_tiny_model(tokenizer, TinyModelConfig(seed=3, tie_word_embeddings=True, num_layers=1))
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    server = fakes()
    engine = RemoteEngine([server.url], tmp_path, weight_chunk_mib=1)
    weights = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # as a tied file has it
    engine.load_weights(weights)
    sent = {name: t for chunk in server.chunks for name, t in chunk.items()}
    assert set(sent) == set(weights) | {"lm_head.weight"}
    assert torch.equal(sent["lm_head.weight"], weights["model.embed_tokens.weight"])
    assert server.weights == engine.weights != "base"
    # The server restarts with its folder's weights: the next call re-sends the sync's chunks first.
    count, server.weights = len(server.chunks), "base"
    engine.generate([[5, 6]], SamplingConfig(max_new_tokens=2, seed=0))
    assert len(server.chunks) == 2 * count and server.weights == engine.weights
    assert [r["weights"] for r in server.requests] == [engine.weights] * 2  # refused (409), then sampled


def test_gpu_rounds_carry_whole_decoder_layers_in_order():
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.up_proj.weight",
             "model.layers.1.input_layernorm.weight", "model.norm.weight", "lm_head.weight"]  # fmt: skip
    rounds = [[name for name, _ in r] for r in layer_rounds((n, torch.zeros(1)) for n in names)]
    assert rounds == [names[:1], names[1:4], names[4:5], names[5:6], names[6:]]
    assert round_key("model.layers.12.mlp.down_proj.weight") == "model.layers.12"
    assert json_safe_update({"names": ["a"]}) == {"names": ["a"]}
    assert set(json_safe_update({"names": ["a"], "ipc_handles": [{"gpu": (1, 2)}]})) == {
        "names",
        "ipc_handles_pickled",
    }


# ------------------------------------------------------------------------------- real servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "llmac", "serve", "--model", str(model), "--port", str(port),
               "--engine_dtype", "float32", "--max_model_len", "512", "--kv_cache_gib", "0.25"]  # fmt: skip
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"llmac serve exited {process.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"llmac serve not healthy after {SERVER_START_S} s: {log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server_a(tiny_actor_dir, tmp_path_factory):
    pytest.importorskip("vllm")
    port, log = _free_port(), tmp_path_factory.mktemp("server_a") / "serve.log"
    process = start_server(tiny_actor_dir, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log)
        yield url
    finally:
        stop(process)


def _ppo(actor: Path, out: Path, engine: EngineConfig) -> list[dict]:
    config = PPOConfig(output_dir=str(out), num_iterations=2, prompts_per_iteration=8, samples_per_prompt=4,
                       max_new_tokens=40, mini_batch_size=16, learning_rate=1e-4, value_learning_rate=1e-3,
                       checkpoint_every=0, eval_every=0, progress=False, seed=3)  # fmt: skip
    PPOTrainer(ModelConfig(model_name_or_path=str(actor)), TaskConfig(num_train=256, num_eval=16), engine,
               config).train()  # fmt: skip
    return MetricsLog(out).read()


@pytest.mark.vllm
def test_ppo_with_a_remote_engine_is_the_in_process_run(server_a, tiny_actor_dir, tmp_path):
    local = _ppo(tiny_actor_dir, tmp_path / "local", EngineConfig(engine="vllm", engine_dtype="float32",
                                                                   max_model_len=512, kv_cache_gib=0.25))  # fmt: skip
    remote = _ppo(tiny_actor_dir, tmp_path / "remote", EngineConfig(engine="remote", server_urls=[server_a],
                                                                     engine_dtype="float32"))  # fmt: skip
    assert [r["iteration"] for r in remote] == [1, 2]
    for mine, theirs in zip(remote, local, strict=True):
        for key, value in theirs.items():
            if not key.endswith(("_seconds", "_per_s")):
                assert mine[key] == pytest.approx(value, abs=1e-5), key
    # The second iteration sampled with weights synced over HTTP: the trainer's, as in-process.
    print("engine_logprob_gap_max in-process", [r["engine_logprob_gap_max"] for r in local],
          "remote", [r["engine_logprob_gap_max"] for r in remote])  # fmt: skip
    assert remote[1]["engine_logprob_gap_max"] < 1e-4
    assert remote[1]["engine_logprob_gap_max"] == pytest.approx(local[1]["engine_logprob_gap_max"], abs=1e-6)
    a = load_file(tmp_path / "local" / "actor" / "model.safetensors")
    b = load_file(tmp_path / "remote" / "actor" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.vllm
def test_two_servers_give_one_servers_samples_through_a_kill_and_a_restart(
    server_a, tiny_actor_dir, tmp_path
):
    from transformers import AutoModelForCausalLM

    port, log = _free_port(), tmp_path / "serve_b.log"
    server_b = f"http://127.0.0.1:{port}"
    process = start_server(tiny_actor_dir, port, log)
    try:
        wait_healthy(server_b, process, log)
        tokenizer = load_tokenizer(tiny_actor_dir)
        prompts = [
            tokenizer(q, add_special_tokens=False)["input_ids"] for q in ("3+4=", "12*3=", "7-2=", "9+9=")
        ]
        sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=24, seed=11)
        one, two = (
            RemoteEngine([server_a], tiny_actor_dir),
            RemoteEngine([server_a, server_b], tiny_actor_dir),
        )
        tokens = lambda groups: [[c.token_ids for c in g] for g in groups]  # noqa: E731
        assert tokens(two.generate(prompts, sampling)) == tokens(one.generate(prompts, sampling))
        steps = one.sample_step(prompts, [""] * len(prompts), SamplingConfig(n=2, max_new_tokens=24, seed=5))
        assert tokens(
            two.sample_step(prompts, [""] * len(prompts), SamplingConfig(n=2, max_new_tokens=24, seed=5))
        ) == tokens(steps)
        assert "step" in {c.finish_reason for g in steps for c in g}
        assert all(c.text.count("\n") <= 1 for g in steps for c in g)

        # New weights to both servers; the engines' log-probs are the trainer model's on them.
        model = AutoModelForCausalLM.from_pretrained(tiny_actor_dir)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.02 * torch.randn_like(parameter, generator=torch.Generator().manual_seed(0)))
        two.load_weights(model.state_dict())
        synced = two.generate(prompts, sampling)
        ids = prompts[3] + synced[3][0].token_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)[len(prompts[3]) - 1 :]
        trainer = logprobs.gather(1, torch.tensor(synced[3][0].token_ids)[:, None]).squeeze(1)
        assert (trainer - torch.tensor(synced[3][0].logprobs)).abs().max() < 1e-4  # prompt 3 ran on B

        # B killed in the middle of a call: a clear error naming it, long before the timeout.
        only_b = RemoteEngine([server_b], tiny_actor_dir, timeout_s=120)
        outcome: dict = {}

        def sample_on_b() -> None:
            try:
                only_b.generate(prompts * 8, SamplingConfig(n=4, max_new_tokens=200, seed=1))
            except LlmacError as error:
                outcome["error"] = error

        caller = threading.Thread(target=sample_on_b)
        start = time.monotonic()
        caller.start()
        time.sleep(1.0)
        process.kill()
        process.wait()
        caller.join(timeout=150)
        assert not caller.is_alive() and time.monotonic() - start < 60
        assert server_b in str(outcome.get("error")), outcome
        # With A still up, B's share moves there: the same samples.
        assert tokens(two.generate(prompts, sampling)) == tokens(synced)

        # B restarted (the folder's weights): the engine re-sends the trainer's weights before sampling on it.
        process = start_server(tiny_actor_dir, port, log)
        assert wait_healthy(server_b, process, log)["weights"] == "base"
        assert tokens(two.generate(prompts, sampling)) == tokens(synced)
        assert json.loads(urllib.request.urlopen(server_b + "/health").read())["weights"] == two.weights
    finally:
        stop(process)


@pytest.mark.gpu
@pytest.mark.ci_may_skip
def test_vllm_native_weight_transfer_on_gpu(tiny_actor_dir, tmp_path):
    """vLLM's IPC weight transfer to a server on this GPU gives the trainer's log-probs (runs where CUDA is)."""
    if not torch.cuda.is_available():
        pytest.skip(
            "needs a CUDA GPU (marker gpu): vLLM's native weight transfer is GPU to GPU; run `pytest -m gpu` there"
        )
    from transformers import AutoModelForCausalLM

    port, log = _free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "llmac", "serve", "--model", str(tiny_actor_dir), "--port", str(port),
               "--engine_dtype", "float32", "--max_model_len", "512", "--gpu_memory_utilization", "0.3",
               "--weight_transfer", "ipc"]  # fmt: skip
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log)
        engine = RemoteEngine([url], tiny_actor_dir, weight_transfer="ipc")
        model = AutoModelForCausalLM.from_pretrained(tiny_actor_dir).cuda()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.02 * torch.randn_like(parameter))
        engine.load_weights((name, tensor) for name, tensor in model.state_dict().items())
        prompt = engine.encode("12*3=")
        completion = engine.generate([prompt], SamplingConfig(temperature=0, max_new_tokens=16))[0][0]
        ids = torch.tensor([prompt + completion.token_ids], device="cuda")
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)[len(prompt) - 1 :]
        trainer = logprobs.gather(1, torch.tensor(completion.token_ids, device="cuda")[:, None]).squeeze(1)
        assert (trainer.cpu() - torch.tensor(completion.logprobs)).abs().max() < 1e-3
        engine.close()
    finally:
        stop(process)


def test_the_multinode_launch_starts_each_nodes_servers_and_points_training_at_all_of_them():
    env = {**os.environ, "DRY_RUN": "1", "NODES": "n0 n1", "NODE_RANK": "1", "MODEL": "/shared/actor"}
    result = subprocess.run(["bash", str(REPO / "scripts/launch_multinode.sh"), "--num_iterations", "3"], cwd=REPO,
                            env=env, capture_output=True, text=True, check=True)  # fmt: skip
    serve, serve_2, train = result.stdout.strip().splitlines()
    assert serve.startswith(
        "CUDA_VISIBLE_DEVICES=6 llmac serve --model /shared/actor --host 0.0.0.0 --port 8000"
    )
    assert (
        "--weight_transfer nccl" in serve
        and serve_2.startswith("CUDA_VISIBLE_DEVICES=7")
        and "--port 8001" in serve_2
    )
    assert (
        "--config_file recipes/accelerate/zero3_multinode.yaml --machine_rank 1 --main_process_ip n0" in train
    )
    assert "--num_machines 2 --num_processes 12" in train
    urls = "http://n0:8000 http://n0:8001 http://n1:8000 http://n1:8001"
    assert (
        f"--engine remote --server_urls {urls} --weight_transfer nccl --weight_transfer_address n0:29600"
        in train
    )
    assert train.endswith("--num_iterations 3")
