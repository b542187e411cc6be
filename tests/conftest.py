"""Shared pytest setup.

Keras must run on the JAX backend for the parity tests, and the backend is fixed when Keras is first
imported (importing TensorFlow imports Keras), so it is set here, before any test module is imported.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
