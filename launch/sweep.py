#!/usr/bin/env python
r"""Sweeps: one jaxmm run per grid point, then a summary table (mean, sd, t interval per row).

  python launch/sweep.py --config=configs/synthetic_derm.py --workdir=runs/fusion \
      --grid 'model.fusion=concat,late,film' 'seed=0,1,2'
  python launch/sweep.py ... --print --launcher='sbatch launch/slurm.sh'  # one command per line
  python launch/sweep.py --workdir=runs/fusion --summarize                 # collect only

Options (--set, --metric, --confidence, --replicate_axis, --mode, --prefix, ...): --help; the
logic is in jaxmm/sweep.py.
"""
import os
import sys

# Run as a script, Python puts launch/ on the path, not the checkout that holds jaxmm.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxmm import sweep

if __name__ == "__main__":
  sys.exit(sweep.main(sys.argv[1:]))
