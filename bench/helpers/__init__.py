"""Shared pieces of the benchmarks (not benchmarks themselves): the tiny actor they run and the TRL GRPO arm."""
