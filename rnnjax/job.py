"""One job: initialize S networks, probe them in one compiled call, write the results."""

import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from rnnjax import results
from rnnjax.config import Config
from rnnjax.init import init_params, make_init, normal, xavier
from rnnjax.probes import make_probe
from rnnjax.tasks import cache_dir, load_timemachine, make_random_batch, make_window_batch, windows

log = logging.getLogger("rnnjax")


def make_job_fns(cfg: Config):
    """The pure per-seed functions of a job: `setup(seed) -> (params, x, y)` and `probe`.

    Returns:
      setup: int seed -> (RNNParams, x (B, T), y (B, T)); vmap it over seeds.
      probe: (params, x, y) -> ProbeResult; vmap it over seeds.
      vocab_size: D = Q, the number of tokens.
    """
    dtype = jnp.dtype(cfg.dtype.value)
    init = cfg.init
    w_hh_init = make_init(init.name.value, std=init.std, gain=init.gain, radius=init.radius)
    # d2l's scratch RNN draws every weight matrix from N(0, 0.01^2); the others use Glorot.
    if init.name.value == "normal":
        io_init = normal(0.01 if init.std is None else init.std)
    else:
        io_init = xavier()

    if cfg.task.name.value == "timemachine":
        corpus, vocab = load_timemachine(cfg.task.path)
        vocab_size = len(vocab)
        batch = make_window_batch(windows(corpus, cfg.seq_len), cfg.batch_size)
    else:
        vocab_size = cfg.task.vocab_size
        batch = make_random_batch(vocab_size, cfg.batch_size, cfg.seq_len)

    def setup(seed):
        k_params, k_batch = jax.random.split(jax.random.key(seed))
        params = init_params(k_params, w_hh_init, io_init, vocab_size, cfg.hidden_size,
                             vocab_size, dtype)
        x, y = batch(k_batch)
        return params, x, y

    return setup, make_probe(cfg.activation.name.value, cfg.probe.loss_at.value), vocab_size


def enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache, so repeated and parallel jobs of the same
    shapes do not recompile. Default directory: ~/.cache/rnnjax/jax (XDG_CACHE_HOME respected);
    JAX_COMPILATION_CACHE_DIR overrides it."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    # XLA on a CPU takes ~0.3 s even for small programs: cache them all.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def enable_dtype(cfg: Config) -> None:
    """float64 needs JAX's x64 mode, switched on before any float64 array is made."""
    if cfg.dtype.value == "float64":
        jax.config.update("jax_enable_x64", True)


def run_job(cfg: Config, out_dir: str | Path, resolved: dict[str, Any] | None = None) -> dict:
    """Probes `cfg.seeds` networks in one compiled call and writes the job's files.

    Files (each written atomically; `summary.json` last, so its presence means finished):
    grad_norms.parquet, params.npz, batch.npz, summary.json.

    Returns:
      The summary dict.
    """
    enable_dtype(cfg)
    enable_compilation_cache()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    setup, probe, vocab_size = make_job_fns(cfg)
    seeds = np.arange(cfg.seed, cfg.seed + cfg.seeds)
    params, x, y = jax.jit(jax.vmap(setup))(jnp.asarray(seeds, jnp.int32))
    res = jax.jit(jax.vmap(probe))(params, x, y)
    res = jax.tree.map(np.asarray, jax.block_until_ready(res))
    wall = time.perf_counter() - start

    columns = results.config_columns(cfg)
    columns["vocab_size"] = vocab_size
    df = results.probe_frame(seeds, res.grad_norm, res.param_grad_norm, columns)
    results.write_parquet(df, out / results.GRAD_NORMS)
    results.write_npz(out / results.PARAMS, **jax.tree.map(np.asarray, params._asdict()))
    results.write_npz(out / results.BATCH, x=np.asarray(x), y=np.asarray(y))

    fits = [results.log10_slope(g) for g in res.grad_norm]
    slopes = np.array([f[0] for f in fits])
    finite = np.isfinite(res.loss).all() & np.isfinite(res.grad_norm).all() & np.isfinite(
        res.param_grad_norm).all()
    headline = {
        "log10_slope_per_step_back": _nanmedian(slopes),
        "log10_slope_per_seed": slopes.tolist(),
        "fit_window_t_per_seed": [list(f[1]) for f in fits],
        "loss_mean": float(np.mean(res.loss)),
        "grad_norm_t1_median": float(np.median(res.grad_norm[:, 0])),
        "grad_norm_tT_median": float(np.median(res.grad_norm[:, -1])),
        "n_nonfinite": int((~np.isfinite(res.grad_norm)).sum() + (~np.isfinite(res.loss)).sum()),
        "n_underflow": int((res.grad_norm == 0).sum()),
    }
    summary = {
        "status": "ok" if finite else "nonfinite",
        "wall_time_s": wall,
        "headline": headline,
        "config": resolved if resolved is not None else OmegaConf.to_container(
            OmegaConf.structured(cfg), enum_to_str=True),
    }
    results.write_json(summary, out / results.SUMMARY)
    log.info(
        "%s/%s T=%d H=%d S=%d: log10 grad_norm per step back %+.4f (median over seeds), "
        "loss %.4f, underflow %d, status %s, %.2fs",
        cfg.activation.name.value, cfg.init.name.value, cfg.seq_len, cfg.hidden_size, cfg.seeds,
        headline["log10_slope_per_step_back"], headline["loss_mean"],
        headline["n_underflow"], summary["status"], wall,
    )
    return summary


def _nanmedian(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")
