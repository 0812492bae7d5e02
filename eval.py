"""Evaluates a saved checkpoint with its config's evaluators; writes WORKDIR/eval/STEP/*.{json,png}.

  python eval.py --config=configs/demo.py --workdir=runs/demo
  python eval.py --config=configs/demo.py --workdir=runs/demo --checkpoint=300
  python eval.py --config=configs/demo.py --workdir=runs/demo --only=gates,passkey
  python eval.py --config=configs/passkey_1b.py:stage=finetune --workdir=runs/pk1b_ft \
      --config.evals.passkey.lengths='(32768,1048576)' --config.evals.passkey.samples=8

Use the config (and arguments) the run was trained with: the model's shape comes from it.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from infini_jax import report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:args].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir (its checkpoints/).")
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step to evaluate; default: the latest.")
_ONLY = flags.DEFINE_list("only", [], "Run only these of the config's evaluators (names in "
                          "config.evals); default: all of them.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
  try:
    report.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value,
                               tuple(_ONLY.value))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"eval.py: error: {e}")


if __name__ == "__main__":
  app.run(main)
