"""DAPO: Direct Advantage Policy Optimization (Skywork, arXiv 2412.18279), offline and step-level.

Not ByteDance's method of the same acronym. ``llmac dapo build`` samples solutions from the reference
policy and MC-values every candidate next step of every state; ``llmac dapo train`` regresses each
candidate's log-ratio to the reference on its advantage over the state's candidates (divided by beta).
"""
