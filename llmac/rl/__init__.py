"""What every online RL pipeline shares; a pipeline (``llmac.ppo``, ...) imports these, never another pipeline.

- :mod:`~llmac.rl.batch`: verified completions and their padded token batch, in length groups.
- :mod:`~llmac.rl.sampler`: prompt order, sampling with the engine (dynamic, ahead on a thread), shares.
- :mod:`~llmac.rl.forward`: length-grouped forward passes (log-probs, values, reference, process rewards).
- :mod:`~llmac.rl.targets` and :mod:`~llmac.rl.estimators`: advantages and value targets, by name.
- :mod:`~llmac.rl.critics`: step critics loaded and checked against the actor and the engine.
- :mod:`~llmac.rl.loop`: the run around an algorithm object.
"""
