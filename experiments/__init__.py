"""Experiment entry points: each folder holds main.py and configs/ only; logic lives in lstm_jax."""
