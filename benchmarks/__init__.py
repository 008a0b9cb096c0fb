"""Speed and memory measurements of supersub_jax; run from the repository root as `python -m benchmarks.<name>`."""
