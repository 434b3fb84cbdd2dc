"""Errors llmac raises on purpose. The CLI prints them as one line (what, where, how to fix).

Each is also a ``ValueError`` (or ``FileNotFoundError``) so callers that catch the built-in kinds
keep working; a traceback is kept only with ``--debug`` or ``LLMAC_DEBUG=1``.
"""

from __future__ import annotations


class LlmacError(Exception):
    """Base of every error llmac raises on purpose; its message is the whole story."""


class ConfigError(LlmacError, ValueError):
    """A config field out of range, or fields that contradict each other."""


class OutputError(LlmacError, ValueError):
    """An output path llmac refuses to write: it holds what llmac did not write, or it is the input."""


class InputNotFoundError(LlmacError, FileNotFoundError):
    """A local model, dataset or file that does not exist."""
