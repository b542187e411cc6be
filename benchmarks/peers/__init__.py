"""One module per framework. Each exposes `available() -> str | None` (None when importable, else why not)
and `build(shape, seed) -> Bench`, where `Bench` has `param_count: int` and `step() -> None` (one
training step: forward, backward and optimizer update, blocking until the result is computed)."""
