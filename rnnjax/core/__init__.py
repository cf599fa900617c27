"""The pure-JAX core: cells, probes, training, theory, tasks, losses, init. Imports no app stack
(no Hydra, OmegaConf, pandas or matplotlib).
"""
