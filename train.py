"""Trains a model from a config file.

  python train.py --config=configs/demo.py --workdir=runs/demo
  python train.py --config=configs/pg19.py:runlocal,memory=local --workdir=runs/local \
      --config.train.steps=100
  python train.py --config=configs/passkey_1b.py --workdir=unused --dry_run --dry_run_devices=64
  python train.py --config=configs/passkey_1b.py --workdir=unused --dry_run --topology=v5e:4x4

Starting again with the same workdir resumes from its latest checkpoint. Multi-host: run the same
command on every host with --distributed (TPU pods, SLURM: discovered from the environment) or
with --coordinator_address, --num_processes and --process_id.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from infini_jax import config as configlib
from infini_jax import aot, dry_run, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:args].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print sizes per device and exit; allocates nothing.")
_DRY_RUN_DEVICES = flags.DEFINE_integer("dry_run_devices", 0,
                                        "Device count for --dry_run (default: this machine's).")
_TOPOLOGY = flags.DEFINE_string(
    "topology", "", "With --dry_run: compile the step for this TPU slice (e.g. v5e:4x4) and print "
    "XLA's per-chip figures (needs libtpu: pip install -r requirements-tpu.txt).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "jax.distributed.initialize() from the environment.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  if _TOPOLOGY.value and not _DRY_RUN.value:
    sys.exit("error: --topology compiles the step for a TPU slice without training: add --dry_run")
  if _DRY_RUN.value and _TOPOLOGY.value:
    sys.exit(aot.check(_CONFIG.value, _TOPOLOGY.value, aot.recipe_name(flags.FLAGS["config"])))
  if _DRY_RUN.value:
    model_cfg = configlib.model_config(_CONFIG.value)
    dry_run.report(_CONFIG.value, model_cfg, _DRY_RUN_DEVICES.value or jax.device_count())
    return
  try:  # the settings on their own, before any process or device is set up: one line, no trace
    configlib.validate(_CONFIG.value)
  except ValueError as e:
    sys.exit(f"train.py: error: {e}")
  if _COORDINATOR.value:
    # CPU hosts need a collectives backend; accelerators bring their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
