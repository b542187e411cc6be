"""Benchmarks of lstm_jax against Flax, Keras 3 and PyTorch (see `benchmarks/README.md`)."""
