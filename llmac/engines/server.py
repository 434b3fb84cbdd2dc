"""``llmac serve``: a vLLM rollout engine behind a small HTTP API, for trainers in other processes or nodes.

    llmac serve --model runs/sft/actor --port 8000 [--host 0.0.0.0] [--engine_dtype float32 ...]

The server hosts one :class:`~llmac.engines.vllm.VLLMEngine` (llmac's worker extension included) and
offers exactly what :class:`~llmac.engines.remote.RemoteEngine` needs. Bodies are JSON unless said:

- ``GET /health``: ``{"status", "instance", "weights", "delimiter", "model", "dtype",
  "weight_transfer", "world_size"}`` (vLLM's workers);
  ``instance`` changes when the server restarts, ``weights`` names the weights it runs ("base" for
  the model folder's).
- ``POST /sample``: ``{"prompts": [[ids]], "seeds": [seed | null per prompt], "sampling": {...},
  "stop_at_delimiter": bool, "weights": "<expected>"}`` -> ``{"completions": [[{"token_ids",
  "logprobs", "finish_reason"}]]}``: raw completions (BaseEngine adds text and steps on the trainer's
  side). Each prompt carries its own seed, so how prompts are spread over servers never changes a
  sample. Answers 409 when the server runs other weights than ``weights`` (it restarted, or another
  trainer synced it): the trainer then re-sends its weights.
- ``POST /reset_prefix_cache``.
- CPU/HTTP weight sync, the in-process sync's own path (the worker extension's stage/commit):
  ``POST /weights/stage`` (body: safetensors bytes of some tensors), ``POST /weights/commit``
  ``{"weights": "<id>"}``, ``POST /weights/discard``, ``POST /weights/reset`` (back to the folder's).
- GPU weight sync, vLLM's native weight transfer (``--weight_transfer nccl|ipc`` starts vLLM with
  ``WeightTransferConfig(backend=...)``), under the routes of vLLM's own RLHF server so vLLM's
  ``HTTPVLLMWeightSyncClient`` works too: ``/init_weight_transfer_engine``, ``/start_weight_update``,
  ``/update_weights``, ``/finish_weight_update`` (``{"weight_version": "<id>"}`` names the weights).

Why not vLLM's OpenAI server: its completion API returns text-level stop reasons and log-probs per
position, loads no worker extension for llmac's stage/commit sync, and runs vLLM's multi-process
engine, which on CPU is 1.2-1.3x slower than the in-process one this server keeps. The stdlib HTTP
server adds no dependency; one lock serialises the engine (a request already batches all its prompts).

No authentication: bind to a trusted network only (``--host 127.0.0.1``, the default, for one machine).
The IPC backend unpickles CUDA IPC handles sent by the trainer (vLLM's
``VLLM_ALLOW_INSECURE_SERIALIZATION``), so it is for a colocated trainer only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from llmac.config import option
from llmac.engines.base import SamplingConfig
from llmac.validation import check_fields

logger = logging.getLogger(__name__)

BASE_WEIGHTS = "base"


@dataclass
class ServeConfig:
    """Where ``llmac serve`` listens and what it serves; the engine's own settings are EngineConfig's fields."""

    model: str = option(help="The actor folder to serve (a from_pretrained folder).")
    host: str = option(
        "127.0.0.1", "Address to listen on: 0.0.0.0 serves other nodes (trusted network only)."
    )
    port: int = option(8000, "Port to listen on.", range="[1, 65535]")

    def __post_init__(self) -> None:
        check_fields(self)


class HTTPStatusError(Exception):
    """A request the server answers with ``status`` and ``message`` (not a server bug)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RolloutServer:
    """The engine and the state the HTTP handlers share: which weights it runs, and one lock."""

    def __init__(self, engine, model: str, weight_transfer: str = "http") -> None:
        self.engine = engine
        self.model = model
        self.weight_transfer = weight_transfer
        self.instance = uuid.uuid4().hex
        self.weights = BASE_WEIGHTS
        self.lock = threading.Lock()
        parallel = getattr(getattr(getattr(engine, "llm", None), "llm_engine", None), "vllm_config", None)
        self.world_size = getattr(getattr(parallel, "parallel_config", None), "world_size", 1)

    # -- requests --------------------------------------------------------------------------------
    def health(self) -> dict:
        return {"status": "ok", "instance": self.instance, "weights": self.weights,
                "delimiter": self.engine.delimiter, "model": self.model, "dtype": str(self.engine.dtype),
                "weight_transfer": self.weight_transfer, "world_size": self.world_size}  # fmt: skip

    def sample(self, request: dict) -> dict:
        expected = request.get("weights", BASE_WEIGHTS)
        if expected != self.weights:
            raise HTTPStatusError(409, f"this server runs weights {self.weights!r}, not {expected!r}")
        prompts, seeds = request["prompts"], request["seeds"]
        if len(prompts) != len(seeds):
            raise HTTPStatusError(400, f"{len(prompts)} prompts but {len(seeds)} seeds")
        sampling = SamplingConfig(**request["sampling"])
        stop = bool(request["stop_at_delimiter"])
        return {"completions": sample_with_seeds(self.engine, prompts, sampling, seeds, stop)}

    def reset_prefix_cache(self, request: dict) -> dict:
        self.engine._live_llm().reset_prefix_cache()
        return {}

    def stage_weights(self, data: bytes) -> dict:
        staged = self.engine._live_llm().collective_rpc("llmac_stage_weights", args=(data,))
        return {"staged": staged[0]}

    def commit_weights(self, request: dict) -> dict:
        llm = self.engine._live_llm()
        self.weights = "partial"  # until the commit went through
        loaded = llm.collective_rpc("llmac_commit_weights")
        llm.reset_prefix_cache()
        self.engine.model_path = None
        self.weights = str(request["weights"])
        return {"loaded": loaded[0], "weights": self.weights}

    def discard_weights(self, request: dict) -> dict:
        self.engine._live_llm().collective_rpc("llmac_discard_weights")
        return {}

    def reset_weights(self, request: dict) -> dict:
        """Back to the model folder's weights (the tied head completed as in any sync)."""
        from safetensors.torch import load_file

        folder = Path(self.model)
        if not folder.is_dir():  # a Hub id: vLLM loaded it from the Hub cache
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(self.model, allow_patterns=["*.safetensors"]))
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise HTTPStatusError(500, f"{self.model} holds no *.safetensors file to reset to")
        self.weights = "partial"
        self.engine.load_weights(pair for file in files for pair in load_file(file).items())
        self.weights = BASE_WEIGHTS
        return {"weights": self.weights}

    # vLLM's native weight transfer (the GPU path): vLLM's own RLHF routes, on vLLM's own LLM methods.
    def init_weight_transfer_engine(self, request: dict) -> dict:
        self.engine._live_llm().init_weight_transfer_engine({"init_info": request["init_info"]})
        return {}

    def start_weight_update(self, request: dict) -> dict:
        self.weights = "partial"
        self.engine._live_llm().start_weight_update()
        return {}

    def update_weights(self, request: dict) -> dict:
        self.engine._live_llm().update_weights({"update_info": request["update_info"]})
        return {}

    def finish_weight_update(self, request: dict) -> dict:
        llm = self.engine._live_llm()
        llm.finish_weight_update()
        llm.reset_prefix_cache()
        self.engine.model_path = None
        self.weights = str(request.get("weight_version") or uuid.uuid4().hex)
        return {"weights": self.weights}

    # -- routing ---------------------------------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes) -> dict:
        if method == "GET" and path == "/health":
            return self.health()  # never waits for the engine: a trainer polls it while it samples
        if method != "POST":
            raise HTTPStatusError(404, f"no route {method} {path}")
        if path == "/weights/stage":
            with self.lock:
                return self.stage_weights(body)
        routes = {"/sample": self.sample, "/reset_prefix_cache": self.reset_prefix_cache,
                  "/weights/commit": self.commit_weights, "/weights/discard": self.discard_weights,
                  "/weights/reset": self.reset_weights,
                  "/init_weight_transfer_engine": self.init_weight_transfer_engine,
                  "/start_weight_update": self.start_weight_update, "/update_weights": self.update_weights,
                  "/finish_weight_update": self.finish_weight_update}  # fmt: skip
        if path not in routes:
            raise HTTPStatusError(404, f"no route POST {path}")
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError as error:
            raise HTTPStatusError(400, f"{path}: the body is not JSON ({error})") from error
        with self.lock:
            try:
                return routes[path](request)
            except (KeyError, TypeError, ValueError) as error:
                if isinstance(error, HTTPStatusError):
                    raise
                raise HTTPStatusError(
                    400, f"{path}: bad request ({type(error).__name__}: {error})"
                ) from error


def sample_with_seeds(engine, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                      seeds: Sequence[int | None], stop_at_delimiter: bool) -> list[list[dict]]:  # fmt: skip
    """Raw completions of ``engine`` (a VLLMEngine) for token prompts, prompt ``i`` sampled with ``seeds[i]``.

    The engine's own ``_sample`` derives prompt seeds from one base seed; here they come in, so a
    trainer that spreads prompts over servers gives each the seed the in-process engine would.
    """
    params = [engine._sampling_params(replace(sampling, seed=seed), stop_at_delimiter, 0) for seed in seeds]
    prompts = [{"prompt_token_ids": [int(t) for t in prompt]} for prompt in prompts]
    with engine._engine_rng():
        outputs = engine._live_llm().generate(prompts, params, use_tqdm=False)
    return [[asdict(engine._raw(out, stop_at_delimiter)) for out in request.outputs] for request in outputs]


def make_handler(server: RolloutServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                status, answer = 200, server.handle(method, self.path, body)
            except HTTPStatusError as error:
                status, answer = error.status, {"error": str(error)}
            except Exception as error:  # a failure inside vLLM: tell the trainer, keep serving
                logger.exception("%s %s failed", method, self.path)
                status, answer = 500, {"error": f"{type(error).__name__}: {error}"}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:
            logger.debug("%s - %s", self.address_string(), format % args)

    return Handler


def build_server_engine(model: str, engine_config, weight_transfer: str = "http"):
    """The VLLMEngine a server runs: the engine config's settings, vLLM's weight transfer when asked."""
    from llmac.engines.vllm import VLLMEngine

    kwargs = dict(engine_config.vllm_kwargs)
    if weight_transfer != "http":
        from vllm.config import WeightTransferConfig

        kwargs["weight_transfer_config"] = WeightTransferConfig(backend=weight_transfer)
        if weight_transfer == "ipc":  # vLLM's HTTP path carries the IPC handles pickled
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    return VLLMEngine(
        model,
        delimiter=engine_config.delimiter,
        dtype=engine_config.engine_dtype,
        seed=engine_config.engine_seed,
        gpu_memory_utilization=engine_config.gpu_memory_utilization,
        kv_cache_gib=engine_config.kv_cache_gib,
        max_model_len=engine_config.max_model_len,
        enable_prefix_caching=engine_config.enable_prefix_caching,
        enforce_eager=engine_config.enforce_eager,
        **kwargs,
    )


def serve(config: ServeConfig, engine_config) -> None:
    """Start the engine, then answer requests until the process is stopped (SIGTERM/SIGINT)."""
    from llmac.errors import ConfigError

    if engine_config.engine not in ("auto", "vllm"):
        raise ConfigError(f"llmac serve: engine must be vllm (or auto), got {engine_config.engine!r}")
    engine = build_server_engine(config.model, engine_config, engine_config.weight_transfer)
    state = RolloutServer(engine, config.model, engine_config.weight_transfer)
    try:
        httpd = ThreadingHTTPServer((config.host, config.port), make_handler(state))
    except OSError as error:
        engine.close()
        raise ConfigError(f"llmac serve: cannot listen on {config.host}:{config.port} ({error})") from error
    httpd.daemon_threads = True
    logger.info("llmac serve: %s ready on http://%s:%d", config.model, config.host, httpd.server_port)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        engine.close()


def main(argv: Sequence[str] | None = None) -> None:
    from llmac.config import parse_config
    from llmac.engines import EngineConfig
    from llmac.paths import check_model_path

    config, engine_config = parse_config((ServeConfig, EngineConfig), argv, prog="llmac serve")
    check_model_path(config.model, "model folder", flag="model")
    serve(config, engine_config)


if __name__ == "__main__":
    main()
