"""Tree search over steps (ALGORITHMS.md section 8): trees, selection, batched search, datasets.

- :mod:`llmac.mcts.tree`: nodes, values, backup, limits; :mod:`llmac.mcts.select`: UCT/PUCT (pure).
- :mod:`llmac.mcts.values`: leaf evaluators (critic, rollouts + verifier, a mix).
- :mod:`llmac.mcts.search`: many trees advancing together, one engine batch per iteration.
- :mod:`llmac.mcts.exports`: value labels, step preferences, rStar pairs, verified solutions.
- :mod:`llmac.mcts.trajectories`: Agent-R revision trajectories, MMC critique pairs.
- :mod:`llmac.mcts.build`: ``llmac mcts build``, trees in resumable shards across processes, and the
  export datasets; :mod:`llmac.mcts.solve`: ``llmac mcts solve``, test-time search by the critic alone;
  :mod:`llmac.mcts.viewer`: ``llmac mcts view``, one HTML page per tree; :mod:`llmac.mcts.config`: their
  configs; :mod:`llmac.mcts.expert_iteration`: ``llmac mcts iterate``, search then SFT on the verified
  solutions, repeated; :mod:`llmac.mcts.cli`: the subcommands.
"""
