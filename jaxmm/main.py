r"""The one entry point: `python -m jaxmm.main --config=configs/x.py[:arg] --workdir=DIR --mode=M`.

Modes: train (train, resume, evaluate the best checkpoint), eval (evaluate a trained workdir),
pipeline (the README's main job: every variant in `config.pipeline.variants`, then a table),
saliency (maps of a trained workdir's checkpoint for `config.saliency.split`, resumable shards),
evaluate_explanations (ROI agreement, integrated feature analysis, faithfulness and sanity
checks of those maps; config.evaluation), baselines (scikit-learn models on the checkpoint's
embeddings; config.baselines), shap (SHAP of metadata fields / report tokens; config.shap),
fairness (subgroup slices and significance tests; config.fairness), report (report.html).

Several processes (hosts): run the same command in each (launch/slurm.sh, launch/tpu_vm.sh);
`--distributed=auto` joins them through jax.distributed when the cluster's environment or
`--num_processes` says there are several (see jaxmm.train.distributed).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxmm import host_memory, workflow
from jaxmm.report import report_runner
from jaxmm.saliency import runner as saliency_runner
from jaxmm.train import config_lib, distributed, loop

MODES = {
    "train": loop.train_and_evaluate,
    "eval": loop.evaluate,
    "pipeline": workflow.run_pipeline,
    "saliency": saliency_runner.run_saliency,
    "evaluate_explanations": workflow.run_evaluate_explanations,
    "baselines": workflow.run_baselines,
    "shap": workflow.run_shap,
    "fairness": workflow.run_fairness,
    "report": report_runner.run_report,
}

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/synthetic_derm.py:smoke.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and analysis.")
flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
flags.DEFINE_enum("distributed", "auto", list(distributed.MODES),
                  "Join several processes with jax.distributed: auto (when the environment or "
                  "--num_processes says there are several), on, off.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (default: from the "
                    "cluster's environment or $JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Number of processes (default: from the cluster).")
flags.DEFINE_integer("process_id", None, "This process's index (default: from the cluster).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # orbax and tfds log every save/restore at INFO; --verbosity=0 brings them back.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  host_memory.keep_host_memory()  # before JAX's backend starts its threads
  distributed.initialize(f.distributed, f.coordinator_address, f.num_processes, f.process_id)
  MODES[flags.FLAGS.mode](flags.FLAGS.config, flags.FLAGS.workdir)


def preflight(argv) -> None:
  """Fails early on a config file that does not exist (ml_collections reads it only when the
  config is first used: a traceback after start-up, or none at all for a mode that reads the
  workdir's own config) and, with the valid keys, on a misspelt `--config.key=value` override
  (the config given as `--config=FILE` or `--config FILE`)."""
  spec = config_lib.config_spec_in(argv)
  path = (spec or "").partition(":")[0]
  if path and not os.path.isfile(path):
    raise ValueError(f"--config: no config file {path!r} (paths are relative to the current "
                     f"directory, {os.getcwd()})")
  if spec and any(a.startswith("--config.") for a in argv):
    config_lib.check_override_paths(config_lib.load_config_file(spec), argv)


if __name__ == "__main__":
  try:
    preflight(sys.argv)
  except ValueError as e:
    sys.exit(f"error: {e}")
  app.run(main)
