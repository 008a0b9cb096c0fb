"""The science of supersub_jax (seeds, regimes, allocations, sweeps); run from the repository root as
`python -m studies.<name>`."""
