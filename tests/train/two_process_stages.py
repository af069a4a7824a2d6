"""One of two processes running jaxmm modes one after another on a trained workdir, as each
process of a multi-process job runs `python -m jaxmm.main --mode=M` (same flags as jaxmm.main,
plus --stages=M1,M2,... instead of --mode), joined through jax.distributed on localhost.
Every file the process replaces or removes (atomic writes end in os.replace) is logged as a
`replace|remove|rmtree<TAB>path` line to $WRITE_LOG.<process index>, so a test can check which
process wrote which output.
"""
import os
import shutil

from absl import app, flags, logging

from jaxmm import main as jaxmm_main  # defines --config, --workdir and the distributed flags
from jaxmm.train import distributed

flags.DEFINE_list("stages", [], "jaxmm.main modes to run, in order.")


def log_writes(log_path: str) -> None:
  """Makes os.replace, os.remove and shutil.rmtree log their target to `log_path` first
  (not the temporaries of atomic writes: their writer or a later write removes them)."""
  replace, remove, rmtree = os.replace, os.remove, shutil.rmtree

  def log(what: str, path) -> None:
    if ".tmp-" not in str(path):
      with open(log_path, "a") as f:
        f.write(f"{what}\t{os.path.abspath(path)}\n")

  def logged(what, fn):
    def call(path, *args, **kwargs):
      log(what, path if what != "replace" else args[0])
      return fn(path, *args, **kwargs)
    return call

  os.replace, os.remove = logged("replace", replace), logged("remove", remove)
  shutil.rmtree = logged("rmtree", rmtree)


def main(argv):
  del argv
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # as jaxmm.main: orbax logs every restore at INFO
  distributed.initialize("on", f.coordinator_address, f.num_processes, f.process_id)
  log_writes(f"{os.environ['WRITE_LOG']}.{f.process_id}")
  for stage in f.stages:
    jaxmm_main.MODES[stage](f.config, f.workdir)
  print(f"process {f.process_id}: stages done", flush=True)


if __name__ == "__main__":
  app.run(main)
