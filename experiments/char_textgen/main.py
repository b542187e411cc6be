"""Character-level text generation (Macbeth, tiny-shakespeare).

Train:    python -m experiments.char_textgen.main --config=experiments/char_textgen/configs/quick.py \
              --workdir=runs/char_quick
Generate: python -m experiments.char_textgen.main --workdir=runs/char_quick --mode=generate \
              --prime="ROMEO:" --length=300 --temperature=0.8 --top_k=10
"""

from typing import Any

import ml_collections
from absl import flags

from lstm_jax import cli
from lstm_jax.tasks import char_lm

flags.DEFINE_string(
    "prime",
    None,
    "generate: priming text (absent or empty: config.generate.prime, else a random training window).",
)
flags.DEFINE_integer("length", None, "generate: characters to generate (default: config).")
flags.DEFINE_float("temperature", None, "generate: 0 = greedy, else sampling temperature.")
flags.DEFINE_integer(
    "top_k", None, "generate: sample among the k most likely characters (0 = all)."
)
flags.DEFINE_integer("num_samples", None, "generate: number of samples.")
flags.DEFINE_integer("sample_seed", None, "generate: sampling seed (default: config.seed).")
FLAGS = flags.FLAGS


def generate(config: ml_collections.ConfigDict | None, workdir: str) -> dict[str, Any]:
    return char_lm.generate_samples(
        config,
        workdir,
        prime=FLAGS.prime,
        length=FLAGS.length,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
        num_samples=FLAGS.num_samples,
        seed=FLAGS.sample_seed,
    )


if __name__ == "__main__":
    cli.run({"train": char_lm.train, "generate": generate})
