"""The one place that picks the process-group backend: gloo without CUDA, and only with >1 process."""

import torch

from llmac.distributed import process_group_backend, trainer_kwargs


def test_gloo_only_for_multi_process_runs_without_cuda(monkeypatch):
    assert not torch.cuda.is_available()  # these machines have no GPU
    assert process_group_backend() == "gloo"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert trainer_kwargs() == {}  # a single process given a backend would expect a process group
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert trainer_kwargs() == {"ddp_backend": "gloo"}


def test_cuda_machines_keep_accelerates_default(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert process_group_backend() is None
    assert trainer_kwargs() == {}
