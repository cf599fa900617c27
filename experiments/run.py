"""Probe per-timestep gradient norms: `python experiments/run.py [overrides]` (see --help)."""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rnnjax.config import register_configs, validate
from rnnjax.job import run_job

register_configs()
log = logging.getLogger("rnnjax")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    run_job(validate(cfg), HydraConfig.get().runtime.output_dir, resolved=resolved)


if __name__ == "__main__":
    main()
