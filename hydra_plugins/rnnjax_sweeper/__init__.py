"""rnnjax's Hydra sweeper (a namespace-package plugin: `hydra_plugins` has no __init__.py)."""
