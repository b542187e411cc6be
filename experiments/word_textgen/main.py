"""Word-level text generation (fashion descriptions).

Train:    python -m experiments.word_textgen.main --config=experiments/word_textgen/configs/fashion.py \
              --workdir=runs/fashion
Generate: python -m experiments.word_textgen.main --workdir=runs/fashion --mode=generate \
              --seed_text="women black" --num_words=10 [--temperature=0.7 --top_k=20]
          (no --seed_text: an interactive prompt on a terminal, else one seed text a line from a
           pipe or file on stdin, else the config's generate.seed_texts)
"""

import ml_collections
from absl import flags

from lstm_jax import cli
from lstm_jax.tasks import word_lm

flags.DEFINE_string(
    "seed_text", None, "generate: text to continue (default: prompt on a terminal)."
)
flags.DEFINE_integer("num_words", None, "generate: words to generate (default: config).")
flags.DEFINE_float("temperature", None, "generate: 0 = greedy, else sampling temperature.")
flags.DEFINE_integer("top_k", None, "generate: sample among the k most likely words (0 = all).")
flags.DEFINE_integer("sample_seed", None, "generate: sampling seed (default: config.seed).")
FLAGS = flags.FLAGS


def generate(config: ml_collections.ConfigDict | None, workdir: str) -> list[dict[str, str]]:
    return word_lm.generate_samples(
        config,
        workdir,
        seed_text=FLAGS.seed_text,
        num_words=FLAGS.num_words,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
        seed=FLAGS.sample_seed,
    )


if __name__ == "__main__":
    cli.run({"train": word_lm.train, "generate": generate})
