"""Sweeps: the Hydra app, directory names, launchers, SLURM."""
