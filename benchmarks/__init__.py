"""Benchmarks of lstm_jax against Flax, Keras 3 and PyTorch (see `benchmarks/README.md`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer of at least `minimum`. A count of 0 (rounds, steps, repeats) ended the
    tools in a `ZeroDivisionError` or `StatisticsError` traceback, often after compiling the step."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in some messages
    return parse
