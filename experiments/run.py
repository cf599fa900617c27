"""Probe per-timestep gradient norms: `python experiments/run.py [overrides]` (see --help)."""

from rnnjax.sweep import main

if __name__ == "__main__":
    main()
