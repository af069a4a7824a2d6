"""launch/*.sh with stand-in `python`, `python3` and `gcloud` on PATH that record what they were
given: paths relative to the caller, quoting of the TPU workers' command line, and the GPU
benchmark script's output folder and exit status. (launch/slurm.sh runs for real in
tests/train/test_multiprocess.py.)"""
import os
import stat
import subprocess

from tests.conftest import REPO

# Prints its working directory, $PYTHONPATH, $JAXMM_DATA_DIR and one argument per line; fails
# (exit 3) when an argument contains "bert".
RECORDER = """#!/usr/bin/env bash
echo "cwd=$PWD"
echo "pythonpath=${PYTHONPATH-}"
echo "data_dir=${JAXMM_DATA_DIR-unset}"
printf 'arg=%s\\n' "$@"
for a in "$@"; do [[ $a == *bert* ]] && exit 3; done
exit 0
"""

# Runs the --command it is given with bash, as each TPU worker's shell would.
FAKE_GCLOUD = """#!/usr/bin/env bash
for a in "$@"; do case $a in --command=*) command=${a#--command=} ;; esac; done
echo "command=$command"
exec bash -c "$command"
"""


def stand_ins(tmp_path, **scripts) -> dict:
  """A PATH with the given executables first; returns the environment to run with."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for name, text in scripts.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(stat.S_IRWXU)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAXMM_DATA_DIR")}
  return {**env, "PATH": f"{bin_dir}:{env['PATH']}"}


def run(command, cwd, env) -> subprocess.CompletedProcess:
  return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                        check=False)


def test_local_takes_paths_relative_to_the_caller(tmp_path):
  """It changed to the checkout first, so `runs/x` landed inside the checkout."""
  env = stand_ins(tmp_path, python=RECORDER)
  done = run([os.path.join(REPO, "launch", "local.sh"), "my cfg.py:smoke", "runs/x",
              "--mode=eval"], tmp_path, env)
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert lines[0] == f"cwd={tmp_path}"
  assert lines[1] == f"pythonpath={REPO}"  # the checkout stays importable
  assert lines[3:] == ["arg=-m", "arg=jaxmm.main", "arg=--config=my cfg.py:smoke",
                       "arg=--workdir=runs/x", "arg=--mode=eval"]


def test_tpu_vm_quotes_the_workers_command(tmp_path):
  """JAXMM_DATA_DIR went unquoted (a space broke the command) and was sent empty when unset,
  which blanked the workers' own setting."""
  env = stand_ins(tmp_path, gcloud=FAKE_GCLOUD, python3=RECORDER)
  remote = tmp_path / "my repo"
  remote.mkdir()
  script = os.path.join(REPO, "launch", "tpu_vm.sh")
  flag = """--config.data.text_key=it's "q" $HOME"""
  done = run([script, "tpu", "zone", "c.py:x", "w", flag], tmp_path,
             {**env, "JAXMM_DATA_DIR": "/mnt/my data", "JAXMM_REMOTE_DIR": str(remote)})
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert lines[1:4] == [f"cwd={remote}", "pythonpath=", "data_dir=/mnt/my data"]
  assert lines[4:] == ["arg=-m", "arg=jaxmm.main", "arg=--config=c.py:x", "arg=--workdir=w",
                       "arg=--distributed=on", f"arg={flag}"]

  home = tmp_path / "home"
  (home / "other repo").mkdir(parents=True)
  done = run([script, "tpu", "zone", "c.py", "w"], tmp_path,
             {**env, "HOME": str(home), "JAXMM_REMOTE_DIR": "~/other repo"})
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[1:4] == [f"cwd={home / 'other repo'}", "pythonpath=",
                                           "data_dir=unset"]


# A python3 whose import checks (`-c`) fail the way the bare GPU image's do.
NO_CAPTUM = """#!/usr/bin/env bash
if [ "$1" = -c ]; then
  echo "captum.attr (ModuleNotFoundError: No module named 'captum')"
  echo "ml_collections (ModuleNotFoundError: No module named 'ml_collections')"
  exit 1
fi
echo "ran $*"
"""


def test_gpu_benchmarks_write_where_called_and_fail_when_a_part_fails(tmp_path):
  """RECORDER stands in for python3: it passes the import preflight (exit 0) and fails the
  bert part."""
  env = stand_ins(tmp_path, python3=RECORDER)
  script = os.path.join(REPO, "launch", "benchmarks_gpu.sh")
  done = run([script, "out"], tmp_path, env)
  assert done.returncode == 1
  assert "=== parts: saliency r50 r18_f32 bert r50_xla_grads (time limits 810 s" in done.stdout
  assert f"--json={tmp_path}/out/r50.json" in done.stdout
  # The float32 ResNet-18 times torch.compile too, not only eager.
  assert "r18_f32: train --models=resnet18 --dtype=float32 --torch_compile=auto" in done.stdout
  assert "!!! bert failed or ran over 200s (exit 3)" in done.stdout
  assert done.stdout.rstrip().endswith("!!! failed or ran over: bert")
  assert (tmp_path / "out" / "log.txt").exists()
  # The two invocations the script documents for a 600 s command limit.
  for parts, limits in ((["saliency", "r50", "r18_f32"], 510), (["bert", "r50_xla_grads"], 300)):
    done = run([script, "out", *parts], tmp_path, env)
    assert f"=== parts: {' '.join(parts)} (time limits {limits} s in all)" in done.stdout
    assert [line.split()[3] for line in done.stdout.splitlines()
            if line.startswith("=== [") and "done;" not in line] == [p + ":" for p in parts]


def test_gpu_benchmarks_stop_before_any_part_without_their_modules(tmp_path):
  env = stand_ins(tmp_path, python3=NO_CAPTUM)
  script = os.path.join(REPO, "launch", "benchmarks_gpu.sh")
  done = run([script, "out", "saliency", "r50"], tmp_path, env)
  assert done.returncode == 2
  assert "No module named 'captum'" in done.stdout and "ml_collections" in done.stdout
  assert "pip install --no-index wheels/*.whl" in done.stdout
  assert "ran " not in done.stdout  # no part started
  done = run([script, "out", "r51"], tmp_path, env)
  assert done.returncode == 2 and "unknown part 'r51'" in done.stderr
