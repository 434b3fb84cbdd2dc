"""Generative critics: critiques that judge each step, the critique -> refine loop and Critique-RL.

- :mod:`~llmac.critique.format`: critique formats (verbose, compact) and their parser.
- :mod:`~llmac.critique.oracle`: the exact step checker of the arithmetic task.
- :mod:`~llmac.critique.data`: critique SFT data synthesized from the actor's own solutions.
- :mod:`~llmac.critique.rewards`: Critique-RL's stage I / stage II rewards (pure).
- :mod:`~llmac.critique.metrics`: Acc, Acc after refine, Acc@Dis, first-error F1, best-of-N (pure).
- :mod:`~llmac.critique.refine`: the critique -> refine loop through the rollout engines.
- :mod:`~llmac.critique.objective`: Critique-RL's KL-shaped rewards, RLOO advantages and loss (pure).
- :mod:`~llmac.critique.episodes`, :mod:`~llmac.critique.trainer`, :mod:`~llmac.critique.config`:
  Critique-RL on the RL core (``llmac critique train``).
- :mod:`~llmac.critique.self_training`: critique-in-the-loop self-training of the actor (``self-train``).
- :mod:`~llmac.critique.inspector`: an HTML page of each critique beside its solution (``inspect``).
- :mod:`~llmac.critique.sft`, :mod:`~llmac.critique.evaluate`, :mod:`~llmac.critique.cli`: ``llmac critique
  sft | train | refine | eval | self-train | inspect``.

Nothing is imported here, so importing one module does not pull in the engines (torch).
"""
