"""Weights from a trainer's GPU to `llmac serve` servers with vLLM's native weight transfer.

Written against vLLM 0.33's documented trainer-side API (the same in 0.32): a server started with
``--weight_transfer nccl`` (its own GPUs) or ``ipc`` (the trainer's GPU) runs vLLM with
``WeightTransferConfig(backend=...)``; here, per server, ``WeightTransferTrainerFactory.trainer_init``
with ``NCCLTrainerInitInfo`` / ``IPCTrainerInitInfo`` builds vLLM's trainer engine once, and each
``send_weights()`` drives one round (start, update, finish) through a ``VLLMWeightSyncClient``
(:class:`ServerSyncClient`: the server's routes, with llmac's timeouts and errors).

Layer by layer. The trainer streams its weights one module at a time (gathered under ZeRO-3), so
the full model is never held at once; a round carries one decoder layer (every part of a fused
q/k/v or gate/up projection together, which vLLM's layer-wise reload needs) or one top-level module
(embeddings, final norm, head). vLLM's ``WeightSource`` wants the round's names, dtypes and shapes
before it iterates: :class:`RoundSource` holds one round's tensors, already on the GPU.

IPC gathers its handles over the default process group when one runs with several ranks, while only
the main process holds an engine: the IPC path is for a single-process trainer (use NCCL otherwise).
"""

from __future__ import annotations

import base64
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch

from llmac.errors import ConfigError

Post = Callable[[str, str, dict], dict]  # (server url, path, JSON body) -> JSON answer

_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def round_key(name: str) -> str:
    """The round a weight travels in: its decoder layer (``model.layers.3``), else its top-level module."""
    layer = _LAYER.match(name)
    return layer.group(1) if layer else name.rsplit(".", 1)[0]


def layer_rounds(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Consecutive weights grouped by :func:`round_key`, as they come (one round in memory at a time)."""
    current: list[tuple[str, torch.Tensor]] = []
    key = None
    for name, tensor in weights:
        if current and round_key(name) != key:
            yield current
            current = []
        key = round_key(name)
        current.append((name, tensor))
    if current:
        yield current


def json_safe_update(update_info: dict) -> dict:
    """``update_info`` as JSON: CUDA IPC handles pickled and base64-encoded under ``ipc_handles_pickled``
    (the form vLLM's workers read over HTTP when ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``)."""
    if "ipc_handles" not in update_info:
        return update_info
    safe = {k: v for k, v in update_info.items() if k != "ipc_handles"}
    safe["ipc_handles_pickled"] = base64.b64encode(pickle.dumps(update_info["ipc_handles"])).decode()
    return safe


class ServerSyncClient:
    """vLLM's ``VLLMWeightSyncClient`` protocol for one `llmac serve` server."""

    def __init__(self, url: str, post: Post) -> None:
        self.url, self.post = url, post
        self.version: str | None = None  # what the server calls the weights once a round finishes

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.post(self.url, "/init_weight_transfer_engine", {"init_info": init_info})

    def start_weight_update(self) -> None:
        self.post(self.url, "/start_weight_update", {})

    def update_weights(self, update_info) -> None:
        payload = (
            [json_safe_update(u) for u in update_info]
            if isinstance(update_info, list)
            else json_safe_update(update_info)
        )
        self.post(self.url, "/update_weights", {"update_info": payload})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.post(self.url, "/finish_weight_update", {"weight_version": weight_version or self.version})


def _round_source_class():
    from vllm.distributed.weight_transfer import ParamMeta, WeightSource

    class RoundSource(WeightSource):
        """One round's (name, GPU tensor) pairs; ``metadata()`` and iteration agree by construction."""

        def __init__(self) -> None:
            self.pairs: list[tuple[str, torch.Tensor]] = []

        def metadata(self) -> list:
            return [ParamMeta(name, t.dtype, tuple(t.shape)) for name, t in self.pairs]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            return iter(list(self.pairs))

    return RoundSource


class NativeWeightSender:
    """vLLM's trainer-side weight transfer engine for each server; :meth:`send` pushes one sync."""

    def __init__(self, servers: Mapping[str, int], backend: str, address: str, post: Post) -> None:
        """``servers``: url -> the server's vLLM world size (its workers); ``address``: host:port (NCCL)."""
        if not torch.cuda.is_available():
            raise ConfigError(
                f"weight_transfer={backend} moves weights GPU to GPU: this trainer has no CUDA GPU"
            )
        if backend == "ipc" and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise ConfigError(
                "weight_transfer=ipc: vLLM gathers IPC handles over every trainer rank, and only the main "
                "process sends weights; use weight_transfer=nccl with several trainer processes"
            )
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        self.device = torch.device("cuda", torch.cuda.current_device())
        source_class = _round_source_class()
        host, _, port = (address or "").rpartition(":")
        self.links = []
        for i, (url, world_size) in enumerate(servers.items()):
            client, source = ServerSyncClient(url, post), source_class()
            init_info = self._init_info(backend, host, int(port or 29600) + i, world_size)
            engine = WeightTransferTrainerFactory.trainer_init(init_info, client=client, source=source)
            self.links.append((client, source, engine))

    @staticmethod
    def _init_info(backend: str, host: str, port: int, world_size: int):
        if backend == "nccl":
            import socket

            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            return NCCLTrainerInitInfo(master_address=host or socket.getfqdn(), master_port=port,
                                       world_size=1 + world_size, rank=0)  # fmt: skip
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        return IPCTrainerInitInfo(rank=0)

    def send(self, weights: Iterable[tuple[str, torch.Tensor]], version: str) -> None:
        """Every weight to every server, one round (layer) at a time; the last round names the weights."""
        rounds = layer_rounds(weights)
        current = next(rounds, None)
        while current is not None:
            following = next(rounds, None)
            pairs = [(name, t.to(self.device, non_blocking=True)) for name, t in current]
            for client, source, engine in self.links:
                source.pairs = pairs
                client.version = version if following is None else f"{version}-partial"
                engine.send_weights()
            current = following

    def close(self) -> None:
        for _, _, engine in self.links:
            engine.shutdown()
        self.links = []
