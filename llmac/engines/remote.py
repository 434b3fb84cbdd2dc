"""The remote rollout engine: :class:`RolloutEngine` over one or more `llmac serve` servers.

``engine: remote`` with ``server_urls: [http://node1:8000, ...]`` runs every pipeline unchanged with
its rollouts on other processes, GPUs or nodes (see :mod:`llmac.engines.server`).

Data parallel. A call's prompts are split into contiguous shards, one per live server, sent at
once. Prompt ``i`` carries the seed the in-process engine would give it (``seed + i * n``), so the
samples are the same on one server or several, and the same as an in-process vLLM engine's.

Faults. Every request has a timeout (``timeout_s``): a server that refuses, drops or stays silent
that long counts as down, and its shard moves to the next live server; with none left the call
raises a :class:`~llmac.errors.LlmacError` naming each server and what went wrong. A down server is
probed at the next call and taken back if it answers (one that hung, only once it has restarted). A server that restarted (or that another trainer synced) runs other
weights than the trainer's: it answers 409, and the engine re-sends the weights before sampling (the
HTTP path keeps its last sync's bytes for that; a fresh run's "base" weights are the server's own
folder). The servers outlive the trainer: :meth:`RemoteEngine.close` stops nothing.

Weights. ``load_weights`` is the one entry whatever the path: ``weight_transfer='http'`` sends the
in-process sync's safetensors chunks over the API into the same worker-extension stage/commit;
``'nccl'``/``'ipc'`` use vLLM's native weight transfer, layer by layer (:mod:`llmac.engines.gpu_transfer`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict
from http.client import HTTPException
from pathlib import Path

import torch

from llmac.engines.base import BaseEngine, RawCompletion, SamplingConfig, Tokens, Weights
from llmac.engines.server import BASE_WEIGHTS
from llmac.engines.tied import complete_tied_weights, tied_weight_names
from llmac.errors import ConfigError, LlmacError
from llmac.models import load_tokenizer
from llmac.steps import DEFAULT_DELIMITER


class ServerDown(LlmacError):
    """A server refused, dropped or timed out a request: the request may go to another server."""


class ServerSilent(ServerDown):
    """A server took a request but did not answer within the timeout (hung, or far too slow)."""


class WeightsMismatch(LlmacError):
    """A server runs other weights than the trainer's (it restarted): re-send them, then retry."""


class RemoteEngine(BaseEngine):
    """Rollouts on `llmac serve` servers (see the module docstring).

    ``model_path`` is the trainer's copy of the served actor: its tokenizer encodes and decodes here,
    its config says which weights are tied (a sync sends both names, as in-process). ``probe_timeout_s``
    bounds the health check of a server that was down at the last call.
    """

    def __init__(
        self,
        server_urls: Sequence[str],
        model_path: str | Path,
        tokenizer=None,
        delimiter: str = DEFAULT_DELIMITER,
        timeout_s: float = 600.0,
        weight_transfer: str = "http",
        weight_transfer_address: str = "",
        weight_chunk_mib: int = 512,
        probe_timeout_s: float = 5.0,
    ) -> None:
        from transformers import AutoConfig

        super().__init__(tokenizer if tokenizer is not None else load_tokenizer(model_path), delimiter)
        self.urls = [url.rstrip("/") for url in server_urls]
        if not self.urls or any(not url.startswith(("http://", "https://")) for url in self.urls):
            raise ConfigError(
                f"server_urls must be http://host:port URLs of `llmac serve` servers, got {list(server_urls)}"
            )
        self.model_path: Path | None = Path(model_path)  # the weights' folder, until load_weights
        self.tied_weights = tied_weight_names(AutoConfig.from_pretrained(str(model_path)))
        self.timeout_s, self.probe_timeout_s = timeout_s, probe_timeout_s
        self.weight_chunk_bytes = weight_chunk_mib * 2**20
        self.weight_transfer, self.weight_transfer_address = weight_transfer, weight_transfer_address
        self.weights = BASE_WEIGHTS  # what every server should run
        self._sent_chunks: list[bytes] = []  # the last HTTP sync, for a server that restarts
        self._down: dict[str, str] = {}  # url -> why it is down
        self._hung: dict[str, str] = {}  # url -> the instance that hung (taken back once it changes)
        self._pool = ThreadPoolExecutor(max_workers=len(self.urls), thread_name_prefix="llmac-remote")
        self._sender = None  # vLLM's native weight transfer, started at the first GPU sync
        self.health = {}
        for url in self.urls:
            try:
                self.health[url] = self._request(url, "/health", timeout=min(timeout_s, 30.0))
            except ServerDown as error:
                self._down[url] = str(error)
        if not self.health:
            raise LlmacError(self._none_left("/health"))
        for url, health in self.health.items():
            if health["delimiter"] != delimiter:
                raise ConfigError(
                    f"server {url} stops steps at {health['delimiter']!r} but this run's delimiter is "
                    f"{delimiter!r}: start it with --delimiter {delimiter!r}"
                )

    # -- sampling ----------------------------------------------------------------------------------
    def _sample(
        self, prompts: list[Tokens], sampling: SamplingConfig, stop_at_delimiter: bool
    ) -> list[list[RawCompletion]]:
        seeds = [
            None if sampling.seed is None else sampling.seed + i * sampling.n for i in range(len(prompts))
        ]
        request = {"sampling": asdict(sampling), "stop_at_delimiter": stop_at_delimiter}
        results: list[list[dict] | None] = [None] * len(prompts)
        pending = [list(range(len(prompts)))]  # shards of prompt indices not sampled yet
        self._probe_down_servers()
        while pending:
            live = self._live("/sample")
            shards = _split([i for shard in pending for i in shard], len(live))
            futures = []
            for url, shard in zip(live, shards, strict=False):
                if shard:
                    shard_prompts, shard_seeds = [prompts[i] for i in shard], [seeds[i] for i in shard]
                    future = self._pool.submit(self._sample_on, url, request, shard_prompts, shard_seeds)
                    futures.append((url, shard, future))
            pending = []
            for url, shard, future in futures:
                try:
                    for i, completions in zip(shard, future.result(), strict=True):
                        results[i] = completions
                except ServerDown as error:
                    self._mark_down(url, error)
                    pending.append(shard)
        return [[RawCompletion(**raw) for raw in group] for group in results]

    def _sample_on(self, url: str, request: dict, prompts: list[Tokens], seeds: list[int | None]) -> list:
        body = {**request, "prompts": prompts, "seeds": seeds}
        try:
            return self._request(url, "/sample", {**body, "weights": self.weights})["completions"]
        except WeightsMismatch:
            self._resend_weights(url)
            return self._request(url, "/sample", {**body, "weights": self.weights})["completions"]

    def reset_prefix_cache(self) -> None:
        for url in self._live("/reset_prefix_cache"):
            self._request(url, "/reset_prefix_cache", {})

    # -- weights -----------------------------------------------------------------------------------
    def load_weights(self, state_dict: Weights) -> None:
        self.model_path = None
        version = uuid.uuid4().hex
        weights = complete_tied_weights(state_dict, self.tied_weights)
        if self.weight_transfer == "http":
            self._send_http(weights, version)
        else:
            self._native_sender().send(weights, version)
            self._sent_chunks = []
        self.weights = version

    def _send_http(self, weights, version: str) -> None:
        import safetensors.torch

        from llmac.engines.vllm import _chunks

        self._probe_down_servers()
        self._sent_chunks = []
        live = self._live("/weights/stage")
        try:
            for chunk in _chunks(weights, self.weight_chunk_bytes):
                data = safetensors.torch.save(chunk)
                self._sent_chunks.append(data)
                live = self._on_each(live, "/weights/stage", data)
            self._on_each(live, "/weights/commit", {"weights": version})
        except BaseException:
            for url in live:  # best effort: the original error matters more
                with suppress(LlmacError):
                    self._request(url, "/weights/discard", {})
            self._sent_chunks = []
            raise

    def _on_each(self, urls: list[str], path: str, body) -> list[str]:
        """Send ``body`` to every server at once; those that went down are dropped (a restart re-syncs them)."""
        futures = [(url, self._pool.submit(self._request, url, path, body)) for url in urls]
        alive = []
        for url, future in futures:
            try:
                future.result()
                alive.append(url)
            except ServerDown as error:
                self._mark_down(url, error)
        if not alive:
            raise LlmacError(self._none_left(path))
        return alive

    def _resend_weights(self, url: str) -> None:
        """Bring a server that runs other weights (a restart) to this trainer's."""
        if self.weights == BASE_WEIGHTS:
            self._request(url, "/weights/reset", {})
            return
        if not self._sent_chunks:
            raise LlmacError(
                f"server {url} restarted (it runs other weights than this trainer's) and weights sent "
                f"with weight_transfer={self.weight_transfer} cannot be re-sent: rerun the training "
                "command, which resumes from the last checkpoint and sends its weights first"
            )
        for data in self._sent_chunks:
            self._request(url, "/weights/stage", data)
        self._request(url, "/weights/commit", {"weights": self.weights})

    def _native_sender(self):
        if self._sender is None:
            from llmac.engines.gpu_transfer import NativeWeightSender

            servers = {
                url: int(h.get("world_size", 1)) for url, h in self.health.items() if url not in self._down
            }
            self._sender = NativeWeightSender(servers, self.weight_transfer, self.weight_transfer_address,
                                              self._request)  # fmt: skip
        return self._sender

    # -- servers -----------------------------------------------------------------------------------
    def _live(self, path: str) -> list[str]:
        live = [url for url in self.urls if url not in self._down]
        if not live:
            raise LlmacError(self._none_left(path))
        return live

    def _mark_down(self, url: str, error: ServerDown) -> None:
        self._down[url] = str(error)
        if isinstance(error, ServerSilent) and url in self.health:  # hung: out until it restarts
            self._hung[url] = self.health[url]["instance"]

    def _probe_down_servers(self) -> None:
        """Take back the down servers that answer /health (a hung one only once it has restarted)."""
        for url in list(self._down):
            try:
                health = self._request(url, "/health", timeout=self.probe_timeout_s)
            except ServerDown:
                continue
            if self._hung.get(url) == health["instance"]:
                continue
            self.health[url] = health
            self._hung.pop(url, None)
            del self._down[url]

    def _none_left(self, path: str) -> str:
        reasons = "; ".join(f"{url}: {why}" for url, why in self._down.items())
        return (
            f"remote engine: no rollout server answered {path} ({reasons}). Check that the servers run "
            "(`llmac serve --model ... --port ...`; its log says why one stopped) and that server_urls "
            "names them; a server restarted with the same weights folder is picked up again"
        )

    def _request(self, url: str, path: str, body=None, timeout: float | None = None) -> dict:
        """POST ``body`` (JSON, or bytes as is) to ``url + path``, or GET when None. Raises ServerDown
        (unreachable, dropped, silent), WeightsMismatch (409) or LlmacError (the server's own error)."""
        timeout = self.timeout_s if timeout is None else timeout
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
        request = urllib.request.Request(url + path, data=data, headers={"Content-Type": kind},
                                         method="GET" if body is None else "POST")  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            message = _error_text(error)
            if error.code == 409:
                raise WeightsMismatch(f"server {url}: {message}") from error
            raise LlmacError(f"server {url} refused {path} (HTTP {error.code}): {message}") from error
        except TimeoutError as error:
            raise ServerSilent(f"no answer to {path} within {timeout:g} s (server_timeout_s)") from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise ServerSilent(f"no answer to {path} within {timeout:g} s (server_timeout_s)") from error
            raise ServerDown(f"unreachable on {path} ({error.reason})") from error
        except (ConnectionError, HTTPException) as error:
            raise ServerDown(f"dropped the connection on {path} ({type(error).__name__}: {error})") from error

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the servers compute in (the first live one's)."""
        name = next(h for url, h in self.health.items() if url not in self._down)["dtype"]
        return getattr(torch, name.removeprefix("torch."))

    def close(self) -> None:
        """Stop this engine's threads and weight-transfer links; the servers keep serving."""
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        self._pool.shutdown(wait=False, cancel_futures=True)


def _split(indices: list[int], parts: int) -> list[list[int]]:
    """``indices`` in ``parts`` contiguous shards whose sizes differ by at most one."""
    size, extra = divmod(len(indices), parts)
    shards, start = [], 0
    for part in range(parts):
        end = start + size + (part < extra)
        shards.append(indices[start:end])
        start = end
    return shards


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        return json.loads(error.read())["error"]
    except (ValueError, KeyError, TypeError, OSError):
        return str(error.reason)
