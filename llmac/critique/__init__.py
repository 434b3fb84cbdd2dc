"""Generative critics: critiques that judge each step, the critique -> refine loop and Critique-RL.

- :mod:`~llmac.critique.format`: critique formats (verbose, compact) and their parser.
- :mod:`~llmac.critique.oracle`: the exact step checker of the arithmetic task.
- :mod:`~llmac.critique.data`: critique SFT data synthesized from the actor's own solutions.
- :mod:`~llmac.critique.rewards`: Critique-RL's stage I / stage II rewards (pure).
- :mod:`~llmac.critique.metrics`: Acc, Acc after refine, Acc@Dis, first-error F1, best-of-N (pure).
- :mod:`~llmac.critique.refine`: the critique -> refine loop through the rollout engines.

Nothing is imported here, so importing one module does not pull in the engines (torch).
"""
