"""llmac: step-level actor-critic RL for reasoning LLMs."""

__version__ = "0.1.0"
