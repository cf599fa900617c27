"""Probe per-timestep gradient norms: `python experiments/run.py [overrides]` (see --help)."""

import logging
import os
import sys

# Jobs that share a GPU (joblib processes, SLURM jobs on one node) must not each preallocate
# 75% of its memory; set before JAX starts its backend.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rnnjax.config import check_group_options, register_configs, sweep_dir_override, validate
from rnnjax.job import run_or_resume

register_configs()
log = logging.getLogger("rnnjax")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    hc = HydraConfig.get()
    summary = run_or_resume(validate(cfg), hc.runtime.output_dir, resolved=resolved)
    if summary["status"] == "failed" and hc.mode == RunMode.RUN:
        # In a sweep the other jobs go on and the closing line lists the failures.
        print(f"rnnjax: error: the job failed: {summary['error']}", file=sys.stderr)
        raise SystemExit(1)
    return {"status": summary["status"]}


if __name__ == "__main__":
    check_group_options(sys.argv[1:], Path(__file__).resolve().parent.parent / "conf")
    sys.argv += sweep_dir_override(sys.argv[1:])
    main()
