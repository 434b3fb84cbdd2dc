"""Reward functions and their registry.

Reward functions are batch functions ``(completions: list[str], answers: list[str]) -> list[float]``,
looked up by :func:`get_reward_fn` from a registered name (``"math"``) or a ``"module:function"`` path.
The math reward and :func:`answer_key` (the vote key for majority voting) run in a shared default
:class:`~llmac.rewards.verifier.Verifier`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

from llmac.rewards.verifier import Verifier

RewardFn = Callable[[list[str], list[str]], list[float]]

# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make a batch reward function available to :func:`get_reward_fn` under ``name``."""
    if not name or ":" in name:
        raise ValueError(f"reward name must be non-empty and without ':', got {name!r}")

    def decorate(fn: RewardFn) -> RewardFn:
        known = _REGISTRY.get(name)
        # Registering the same function again (a module reloaded, a notebook cell re-run) replaces it.
        if known is not None and _qualified(known) != _qualified(fn):
            raise ValueError(f"reward {name!r} is already registered to {_qualified(known)}")
        _REGISTRY[name] = fn
        return fn

    return decorate


def _qualified(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def registered_rewards() -> list[str]:
    """Names known to :func:`get_reward_fn`."""
    return sorted(_REGISTRY)


def get_reward_fn(name_or_path: str) -> RewardFn:
    """A batch reward ``(completions, answers) -> list[float]`` by registered name or ``"module:func"``."""
    if ":" not in name_or_path:
        if name_or_path in _REGISTRY:
            return _REGISTRY[name_or_path]
        raise ValueError(
            f"unknown reward {name_or_path!r}: registered rewards are {registered_rewards()}; "
            "or give an import path 'package.module:function'"
        )
    module_name, _, attr = name_or_path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"bad reward import path {name_or_path!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"bad reward import path {name_or_path!r}: cannot import module {module_name!r} ({exc})"
        ) from exc
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(
                f"bad reward import path {name_or_path!r}: module {module_name!r} has no {attr!r}"
            )
    if not callable(fn):
        raise ValueError(f"bad reward import path {name_or_path!r}: {attr!r} is not callable")
    return fn


# ---------------------------------------------------------------------------------------------------
# The default verifier and the math reward
# ---------------------------------------------------------------------------------------------------

_default_verifier: Verifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> Verifier:
    """The shared :class:`Verifier` (process mode, default config), created on first use."""
    global _default_verifier
    with _default_lock:
        if _default_verifier is None:
            _default_verifier = Verifier()
        return _default_verifier


def set_default_verifier(verifier: Verifier) -> Verifier | None:
    """Make ``verifier`` the one behind :func:`math_reward` and :func:`math_rewards`; returns the old one."""
    global _default_verifier
    with _default_lock:
        previous, _default_verifier = _default_verifier, verifier
        return previous


def math_reward(completion: str, answer: str) -> float:
    """1.0 if the final answer of ``completion`` equals ``answer`` (math-verify), else 0.0."""
    return default_verifier().score([completion], [answer])[0]


@register_reward("math")
def math_rewards(completions: list[str], answers: list[str]) -> list[float]:
    """Batch math reward through the default :class:`Verifier`: 1.0 per correct final answer, else 0.0."""
    return default_verifier().score(completions, answers)


def answer_key(completion: str) -> str | None:
    """A vote key for majority voting: the final answer in a canonical form, None if there is none.

    "18", "$18", "18.00" and "\\boxed{18}" share a key, as do "0.5" and "\\frac{1}{2}"; other
    expressions key by math-verify's reading of them. Runs in the default verifier's worker, since
    parsing alone can hang on nested LaTeX.
    """
    return answer_keys([completion])[0]


def answer_keys(completions: list[str]) -> list[str | None]:
    """:func:`answer_key` of many completions in one round trip to the verifier's worker."""
    return default_verifier().answer_keys(completions)
