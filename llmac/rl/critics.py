"""Step critics an RL pipeline loads (a value model to train on, a process reward model to read), checked
to read the actor's tokens and the engine's steps."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel

from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer
from llmac.errors import ConfigError


def load_step_critic(
    path: str | Path, dtype: str, actor_tokenizer, delimiter: str, field: str
) -> PreTrainedModel:
    """The step critic saved at ``path`` (the config field ``field`` names it), refused when it cannot
    read what the actor and the engine produce.

    A critic reads the actor's token ids, so it must have the actor's vocabulary; and it was trained to
    score steps split at one delimiter (``step_delimiter`` in its ``config.json``): read at another
    delimiter's step ends, its values would silently be read at the wrong tokens.
    """
    if load_critic_tokenizer(path).get_vocab() != actor_tokenizer.get_vocab():
        raise ConfigError(f"{field}: the critic at {path} has another tokenizer than the actor: it cannot "
                          "read the actor's token ids; train it from this actor (`llmac critic train`)")  # fmt: skip
    critic = load_critic(path, dtype)
    trained_on = critic_delimiter(critic)
    if trained_on != delimiter:
        raise ConfigError(
            f"{field}: the critic at {path} was trained on steps ending with {trained_on!r} (step_delimiter "
            f"in its config.json) but the engine splits steps at {delimiter!r}; set delimiter: {trained_on!r} "
            "in the recipe, or train a critic with the engine's delimiter"
        )
    return critic
