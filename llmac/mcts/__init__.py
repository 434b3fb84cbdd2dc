"""Tree search over steps (ALGORITHMS.md section 8): trees, selection, batched search, datasets.

- :mod:`llmac.mcts.tree`: nodes, values, backup, limits; :mod:`llmac.mcts.select`: UCT/PUCT (pure).
- :mod:`llmac.mcts.values`: leaf evaluators (critic, rollouts + verifier, a mix).
- :mod:`llmac.mcts.search`: many trees advancing together, one engine batch per iteration.
- :mod:`llmac.mcts.exports`: value labels, step preferences, rStar pairs, verified solutions.
- :mod:`llmac.mcts.trajectories`: Agent-R revision trajectories, MMC critique pairs.
"""
