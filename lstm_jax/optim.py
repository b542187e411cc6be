"""Optimizers and learning-rate schedules from `config.optimizer`, matching Keras' update rules.

* ``adam`` / ``adamw``: Keras' Adam, whose epsilon sits outside the square root of the *uncorrected* second
  moment: ``θ -= lr·√(1-β₂ᵗ)/(1-β₁ᵗ) · m / (√v + ε)``. Optax's `adam` adds ε to the bias-corrected
  ``√v̂`` instead, which is a different (t-dependent) ε, so `scale_by_keras_adam` implements Keras' form.
  ``adamw`` adds decoupled weight decay ``θ -= lr·wd·θ`` (Keras' AdamW).
* ``rmsprop``: Keras' ``θ -= lr·g / √(v + ε)`` with ``v = ρv + (1-ρ)g²`` from zero, i.e. optax's
  `rmsprop(decay=rho, eps=eps, eps_in_sqrt=True, initial_scale=0)`.
* ``sgd``: plain or momentum (optionally Nesterov) SGD in PyTorch's (and optax's) form ``v = μv + g``,
  ``θ -= lr·v``. Keras' ``v = μv - lr·g``, ``θ += v`` is the same under a constant learning rate only: under
  a schedule Keras' velocity keeps each past gradient scaled by its own step's rate, this one rescales the
  whole velocity by the current rate.

Every optimizer is ``optax.chain(clip_by_global_norm(clip_norm), <optimizer>)`` when ``clip_norm > 0``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lstm_jax.errors import UserError

__all__ = [
    "decay_steps",
    "warmup_problem",
    "make_schedule",
    "schedule_depends_on_total",
    "make_optimizer",
    "scale_by_keras_adam",
    "ScaleByKerasAdamState",
]


def make_schedule(opt: Any, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule of `config.optimizer` over `total_steps` updates.

    constant: ``learning_rate``; cosine: cosine decay from ``learning_rate`` to
    ``learning_rate·min_lr_ratio`` over all steps; warmup_cosine: linear warmup from 0 over ``warmup_steps``,
    then cosine decay; warmup_constant: linear warmup, then constant. The cosine ones span ``decay_steps``
    steps (warmup included) when it is set, as Keras' ``decay_steps`` or PyTorch's ``T_max``, and then stay
    at their end value (Keras' ``CosineDecay(warmup_steps=W, decay_steps=D)`` and PyTorch's warmup then
    ``T_max=D`` decay for D steps after the warmup: here ``decay_steps=W+D``); with ``decay_steps`` 0
    they span `total_steps` (`schedule_depends_on_total`).
    """
    lr = float(opt.learning_rate)
    total = decay_steps(opt) or max(int(total_steps), 1)
    end = lr * float(opt.min_lr_ratio)
    if opt.schedule == "constant":
        return optax.constant_schedule(lr)
    if opt.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total, alpha=float(opt.min_lr_ratio))
    warmup = int(opt.warmup_steps)
    if opt.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(total, warmup + 1),
            end_value=end,
        )
    if opt.schedule == "warmup_constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    raise UserError(
        f"config.optimizer.schedule must be one of constant, cosine, warmup_cosine, warmup_constant,"
        f" got {opt.schedule!r}; fix it in the config"
    )


def warmup_problem(opt: Any, total_steps: int) -> str | None:
    """One line when a warmup schedule's ``warmup_steps`` is not shorter than the run (`total_steps`):
    the learning rate rises for the whole run and never reaches ``learning_rate``, nor decays (Keras and
    optax take such a schedule as given, silently); None otherwise. The engine logs it as a warning."""
    if not str(opt.schedule).startswith("warmup"):
        return None
    warmup = int(opt.warmup_steps)
    if warmup < int(total_steps):
        return None
    return (
        f"config.optimizer.warmup_steps={warmup} is not shorter than the run's {int(total_steps)}"
        f" steps: the learning rate rises from 0 for the whole run and never reaches"
        f" learning_rate={float(opt.learning_rate):g}; lower --config.optimizer.warmup_steps or train"
        " longer"
    )


def decay_steps(opt: Any) -> int:
    """``optimizer.decay_steps``: the cosine schedules' length in steps, 0 for the run's total steps (also
    in a run saved before the field existed)."""
    return int(opt.get("decay_steps", 0))


def schedule_depends_on_total(opt: Any) -> bool:
    """Whether `make_schedule(opt, total_steps)` changes with `total_steps`: the cosine decays laid over
    the whole run (not with ``min_lr_ratio`` 1, where they decay to where they start, nor with a fixed
    ``decay_steps``). A run trained on (``train.num_epochs`` / ``num_steps`` raised on resume) has its decay
    re-timed then, and the learning rate jumps at the resumed step."""
    return (
        opt.schedule in ("cosine", "warmup_cosine")
        and float(opt.min_lr_ratio) < 1
        and not decay_steps(opt)
    )


class ScaleByKerasAdamState(NamedTuple):
    """Keras Adam's state: step count, first moment `mu`, second moment `nu` (same tree as params)."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_keras_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7
) -> optax.GradientTransformation:
    """Keras' Adam direction ``√(1-β₂ᵗ)/(1-β₁ᵗ) · m / (√v + ε)`` (apply ``scale_by_learning_rate`` after)."""

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByKerasAdamState(
            jnp.zeros([], jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params)
        )

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: m + (1.0 - b1) * (g - m), state.mu, updates)
        nu = jax.tree.map(lambda v, g: v + (1.0 - b2) * (g * g - v), state.nu, updates)
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        alpha = jnp.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        new = jax.tree.map(lambda m, v: (alpha * m / (jnp.sqrt(v) + eps)).astype(m.dtype), mu, nu)
        return new, ScaleByKerasAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(opt: Any, total_steps: int) -> optax.GradientTransformation:
    """``optax.chain(clip_by_global_norm, <optimizer with schedule>)`` from `config.optimizer`.

    Args:
      opt: the `config.optimizer` section (see `lstm_jax.config_utils.engine_defaults`).
      total_steps: number of updates of the whole run (for decaying schedules).
    """
    schedule = make_schedule(opt, total_steps)
    name = opt.name
    momentum = float(opt.momentum) or None
    if name == "adam":
        core = optax.chain(
            scale_by_keras_adam(opt.b1, opt.b2, opt.eps), optax.scale_by_learning_rate(schedule)
        )
    elif name == "adamw":
        core = optax.chain(
            scale_by_keras_adam(opt.b1, opt.b2, opt.eps),
            optax.add_decayed_weights(float(opt.weight_decay)),
            optax.scale_by_learning_rate(schedule),
        )
    elif name == "rmsprop":
        core = optax.rmsprop(
            schedule,
            decay=float(opt.rho),
            eps=float(opt.eps),
            initial_scale=0.0,
            eps_in_sqrt=True,
            momentum=momentum,
            nesterov=bool(opt.nesterov),
        )
    elif name == "sgd":
        core = optax.sgd(schedule, momentum=momentum, nesterov=bool(opt.nesterov))
    else:
        raise UserError(
            f"config.optimizer.name must be one of adam, adamw, rmsprop, sgd, got {name!r};"
            " fix it in the config"
        )
    if float(opt.clip_norm) > 0:
        return optax.chain(optax.clip_by_global_norm(float(opt.clip_norm)), core)
    return core
