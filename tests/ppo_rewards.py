"""Reward functions the PPO tests name by import path (``ppo_rewards:<name>``)."""

from __future__ import annotations


def short(texts: list[str], golds: list[str]) -> list[float]:
    """1 for a completion of at most 24 characters: a reward the tiny actor can learn in a few updates."""
    return [float(len(t) <= 24) for t in texts]


def always_one(texts: list[str], golds: list[str]) -> list[float]:
    return [1.0] * len(texts)


def raises(texts: list[str], golds: list[str]) -> list[float]:
    raise KeyError("the grader lost its answer table")


def nan_for_third(texts: list[str], golds: list[str]) -> list[float]:
    return [float("nan") if i == 2 else 0.0 for i in range(len(texts))]
