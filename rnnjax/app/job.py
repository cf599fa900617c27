"""One job: initialize S networks, probe them (and train them) with vmap, write the results."""

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from rnnjax.app import dynamics, provenance, results, timemap, tracking
from rnnjax.app.config import Config
from rnnjax.app.locks import JobBusy, holding_job_lock, job_lock  # noqa: F401 (re-exported)
from rnnjax.app.memory import fit_seeds, memory_budget
from rnnjax.app.progress import progress_line
from rnnjax.app.summary import headline, label_keys, log_headline, theory_summary, to_host
from rnnjax.app.training import (  # noqa: F401 (scan_of, total_steps: here before)
    JobRun,
    profile_truncation,
    scan_of,
    total_steps,
    train_job,
)
from rnnjax.app.validate import cell_options, init_values
from rnnjax.core.cells import Cell, registry
from rnnjax.core.cells.stack import stack
from rnnjax.core.probes import make_probe
from rnnjax.core.tasks import DataError, Task, cache_dir, make_task

log = logging.getLogger("rnnjax")

# XLA's CPU options for a program that runs once and does little (the initialization): LLVM
# without its optimizations, elemental emitters, code in one piece. On a 2-core CPU an LSTM's
# initialization (H = 128, 2 networks, copy batches of T = 1000) compiles in 0.5 s, not 2.5 s,
# and runs in 15 ms, not 4. Not for the probe or training: they would run 3 times as long.
RUN_ONCE_CPU = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": 1}


def run_once_options() -> dict[str, Any] | None:
    """The compiler options of a program that runs once (`RUN_ONCE_CPU` on a CPU, else XLA's
    defaults)."""
    return RUN_ONCE_CPU if jax.default_backend() == "cpu" else None


def job_task(cfg: Config, path: str | None = None) -> Task:
    """The job's task with its batch functions (its text read from `path`, if given, else as
    `cfg.task.path` says)."""
    return make_task(cfg.task.name.value, cfg.batch_size, cfg.seq_len, cfg.task.vocab_size,
                     path or cfg.task.path, cfg.task.tokens, cfg.task.symbols)


def build_cell(cfg: Config, init_value=None) -> Cell:
    """The job's cell, built once from the config (`init_value`: the init's parameter, which
    may be a traced value when a list of them is vmapped; None: the config's own)."""
    if init_value is None:
        init_value = init_values(cfg)[1][0]
    cell = registry.build(cfg.cell.name.value, cell_options(cfg),
                          activation=cfg.activation.name.value, init=cfg.init.name.value,
                          init_value=init_value)
    return stack([cell] * cfg.model.layers)  # model.layers=1: the cell itself, not a stack


def job_name(cfg: Config) -> str:
    """What the networks are, for the log: "tanh/normal" (vanilla: activation/init), "lstm",
    "gru/orthogonal" (another cell, with its init where it takes one and it is not the
    default)."""
    cell = cfg.cell.name.value
    if registry.get(cell).activations is None:  # the activation is free: it names the network
        return f"{cfg.activation.name.value}/{cfg.init.name.value}"
    init = cfg.init.name.value
    return cell if init == "normal" else f"{cell}/{init}"


def make_setup(cfg: Config, task: Task):
    """`setup(seed, value) -> (params, x, y, keys)`: one network, its probed batch, and the
    keys of its training data and validation set (shape (2,) of keys).

    vmap it over seeds and init values (`value`: the init's parameter, see `init_values`).
    Network s of a job uses seed `cfg.seed + s`, so a seed names the same network (and batch)
    in any job with the same shapes, and the values of a list scale the same random draws.
    """
    dtype = jnp.dtype(cfg.dtype.value)
    param, _, _ = init_values(cfg)

    def setup(seed, value):
        cell = build_cell(cfg, value if param else None)
        k_params, k_batch, k_train, k_val = jax.random.split(jax.random.key(seed), 4)
        params = cell.init(k_params, task.D, cfg.hidden_size, task.Q, dtype)
        x, y = task.probe_batch(k_batch)
        return params, x, y, jnp.stack([k_train, k_val])

    return setup


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


def finished_summary(out_dir: str | Path, resolved: dict[str, Any]) -> dict | None:
    """The summary of a finished earlier run of the same job in `out_dir`, else None: THE
    decision whether a job is finished (resume skips it, a sweep need not launch it).

    Finished means: its summary.json validates and its files match the sizes and sha1 it lists
    (`results.read_job`), and it was run with the same config (as written to summary.json,
    without `resume` and `logger`: neither changes what a job computes), the same code
    version (`provenance.code_version`: rnnjax's version and a hash of its source) and the
    same data file contents (sha1; for task=timemachine). Any difference is logged and the job
    runs again.
    """
    out = Path(out_dir)
    state = results.read_job(out)
    if state.status not in results.FINISHED:
        if state.problem:
            log.warning("%s holds an unfinished run (%s): running the job again", out,
                        state.problem)
        return None
    summary = state.summary

    def strip(c):
        return {k: v for k, v in (c or {}).items() if k not in NOT_IDENTITY}

    if strip(summary["config"]) != strip(results.json_safe(resolved)):
        log.warning("%s holds a finished run of another config: running this one again", out)
        return None
    code = provenance.code_version()
    if summary["provenance"]["code_version"] != code:
        log.warning("%s holds a finished run of another code version (%s; this is %s): running "
                    "it again", out, summary["provenance"]["code_version"], code)
        return None
    task = resolved.get("task") or {}
    try:
        data = provenance.data_file(task.get("name"), task.get("path"))
    except DataError:
        return None  # the run will say what is wrong with the data
    before = summary["provenance"].get("data")
    recorded = before.get("sha1") if isinstance(before, dict) else None
    now = data["sha1"] if data else None
    if recorded != now:
        log.warning("%s holds a finished run on other data (sha1 %s; the data now: %s): running "
                    "it again", out, recorded, now)
        return None
    return summary


# Config keys that change nothing a job computes: a finished job is finished whatever they say
NOT_IDENTITY = ("resume", "logger")


@holding_job_lock
def run_or_resume(cfg: Config, out_dir: str | Path, resolved: dict[str, Any]) -> dict:
    """What a Hydra job does: skips a finished run (with `resume`; its results go to the
    config's tracker, if it names one, without recomputing), else runs the job; a job that
    raises writes summary.json with status "failed" and the error, and returns it.

    Only Exceptions are caught: an interrupt (Ctrl-C) still stops the sweep.
    """
    out = Path(out_dir)
    if cfg.resume:
        done = finished_summary(out, resolved)
        if done is not None:
            log.info("skipped: %s already holds a finished run of this config (status %s; "
                     "resume=false runs it again)", out, done["status"])
            return tracking.send_and_record(cfg.logger, out, done)
    # A stale summary.json would mark half-rewritten files as finished: remove it first, and
    # the temporary files of a run killed between writing and renaming.
    (out / results.SUMMARY).unlink(missing_ok=True)
    for tmp in results.remove_temporaries(out) if out.is_dir() else []:
        log.info("removed %s, left by a run that was killed", tmp.name)
    started_at = provenance.now()
    start = time.perf_counter()
    try:
        return run_job(cfg, out, resolved=resolved)
    except Exception as e:
        error = f"{type(e).__name__}: {e}".splitlines()[0]
        try:
            data = provenance.data_file(cfg.task.name.value, cfg.task.path)
        except DataError:
            data = None
        summary = {"status": "failed", "error": error, "traceback": traceback.format_exc(),
                   "wall_time_s": time.perf_counter() - start, "config": resolved,
                   "provenance": provenance.provenance(started_at, data)}
        out.mkdir(parents=True, exist_ok=True)
        results.write_json(summary, out / results.SUMMARY)
        log.error("job failed: %s (traceback in %s)", error, out / results.SUMMARY)
        return summary


def run_job(cfg: Config, out_dir: str | Path, resolved: dict[str, Any] | None = None) -> dict:
    """Probes `cfg.seeds` networks in one compiled call, trains them if asked, writes files.

    Files (each written atomically; `summary.json` last, listing the others with their sizes
    and sha1, so that a valid summary means finished): grad_norms.parquet, params.npz,
    batch.npz, summary.json, and metrics.parquet when training.

    Returns:
      The summary dict.
    """
    enable_dtype(cfg)
    enable_compilation_cache()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started_at = provenance.now()
    start = time.perf_counter()

    # The job reads the very file it hashed (resume compares the sha1).
    data = provenance.data_file(cfg.task.name.value, cfg.task.path)
    task = job_task(cfg, data and data["path"])
    seeds = np.arange(cfg.seed, cfg.seed + cfg.seeds)
    param, values, is_list = init_values(cfg)
    # Networks value-major, seed-minor: network i has value i // S and seed seeds[i % S].
    net_seeds = np.tile(seeds, len(values))
    net_values = np.repeat(np.array([0.0 if v is None else v for v in values]), len(seeds))
    # Compiling the initialization takes seconds for a new cell: say so (nothing a user waits
    # for stays silent).
    log.info("initializing %d networks and their batches (compiling the initialization) ...",
             len(net_seeds))
    setup = jax.jit(jax.vmap(make_setup(cfg, task)), compiler_options=run_once_options())
    params, x, y, data_keys = setup(
        jnp.asarray(net_seeds), jnp.asarray(net_values, cfg.dtype.value))
    summary, grad_norms, metrics = _probe_and_train(JobRun(
        cfg, build_cell(cfg), task, data, params, x, y, data_keys, memory_budget(cfg.max_memory_gb),
        out, resolved, started_at, start))
    # The job's files are written: only now does its tracker get them (its failure is
    # recorded, never raised), the same way as a finished job's (`tracking.log_results`).
    if cfg.logger.name.value != "none":
        sent = tracking.send_and_record(cfg.logger, out, results.json_safe(summary),
                                        grad_norms, metrics)
        summary[tracking.TRACKERS] = sent.get(tracking.TRACKERS, [])
    return summary


def _probe_and_train(run: JobRun) -> tuple[dict, pd.DataFrame, pd.DataFrame | None]:
    """The rest of `run_job`: returns the summary and the tables it wrote (metrics: None
    without training)."""
    (cfg, cell, task, data, params, x, y, _, budget, out, resolved, started_at, start) = run
    seeds = np.arange(cfg.seed, cfg.seed + cfg.seeds)
    param, values, is_list = init_values(cfg)
    probe = fit_seeds(make_probe(cell, cfg.probe.loss_at.value, task.kind,
                                 profile_truncation(cfg), cfg.probe.unroll, scan_of(cfg, cell)),
                      (0, 0, 0), (params, x, y), budget, "probe")
    started_probe = time.perf_counter()
    prof = to_host(probe(params, x, y))
    log.info("probe: measured in %.1f s; computing the theory beside it ...",
             time.perf_counter() - started_probe)

    T = int(x.shape[2])  # x: (N, B, T) or (N, B, T, C); seq_len + 20 for task=copy
    columns = results.config_columns(cfg)
    columns["vocab_size"] = task.D if jnp.issubdtype(x.dtype, jnp.integer) else None  # tokens
    columns["T"] = T
    columns["scan"] = scan_of(cfg, cell)  # the scan that ran (probe.scan=null resolved)
    groups = [slice(g * cfg.seeds, (g + 1) * cfg.seeds) for g in range(len(values))]
    group_columns = [{**columns, **({f"init_{param}": v} if is_list else {})} for v in values]
    frames = [results.probe_frame(seeds, prof.select(sl), c)
              for sl, c in zip(groups, group_columns, strict=True)]
    results.write_npz(out / results.PARAMS, **results.param_arrays(params))
    results.write_npz(out / results.BATCH, x=np.asarray(x), y=np.asarray(y))
    written = [results.GRAD_NORMS, results.PARAMS, results.BATCH]
    if cfg.probe.time_map:  # the time-to-time map at initialization (rnnjax.app.timemap)
        written.append(timemap.write_time_map(run, profile_truncation(cfg)))

    lyap = dynamics.Lyapunov.build(cell, params, T, cfg.lyapunov.k, cfg.lyapunov.every)
    context = {"kind": task.kind, "loss_at": cfg.probe.loss_at.value,
               "activation": cfg.activation.name.value, "init": cfg.init.name.value}
    theory = registry.get(cfg.cell.name.value).theory
    headlines, spectra = [], []
    for sl, v, c in zip(groups, values, group_columns, strict=True):
        h = headline(prof.select(sl))
        h["theory"] = theory_summary(
            cell, jax.tree.map(lambda a, sl=sl: a[sl], params), x[sl],
            h["log10_slope_per_step_back"], theory, cell_options(cfg), lyap, y=y[sl],
            init_value=v, **context)
        headlines.append({**({"init_param": param, "init_value": v} if is_list else {}), **h})
        spectra.append(dynamics.lyapunov_frame(seeds, h["theory"], c))

    steps = total_steps(cfg, task)
    training, metrics = {}, None
    if steps:  # validate() allows training with a single init value only
        frames, training = train_job(run, probe, frames, columns, dynamics.StepTheory(
            cell, x, lyap, theory, cell_options(cfg), y=y, init_value=values[0], **context))
        metrics = training.pop("metrics")
        logged = training.pop("logged")  # the headline, theory and spectrum at the end too:
        spectra.append(dynamics.logged_spectra(seeds, logged, columns))
        training["headline"] = logged[-1][1].headline  # the last logged step is the last step
        results.write_parquet(metrics, out / results.METRICS)
        written.append(results.METRICS)
    grad_norms = pd.concat(frames, ignore_index=True)
    results.write_parquet(grad_norms, out / results.GRAD_NORMS)
    results.write_parquet(pd.concat(spectra, ignore_index=True), out / dynamics.LYAPUNOV_FILE)
    written.append(dynamics.LYAPUNOV_FILE)
    wall = time.perf_counter() - start
    finite = (all(h["n_nonfinite"] == 0 for h in headlines)
              and not training.get("diverged_seeds"))
    summary = {
        "status": "ok" if finite else "nonfinite",
        "wall_time_s": wall,
        "T": T,
        # where the cell, activation and init stand in tables (what the report sorts by)
        **results.order_keys(cfg.cell.name.value, cfg.activation.name.value,
                             cfg.init.name.value),
        **label_keys(cfg.cell.name.value, cell_options(cfg), cfg.activation.name.value),
        # a list of values: one headline per value under "headlines" (load_summaries gives
        # each its row)
        **({"headlines": headlines} if is_list else {"headline": headlines[0]}),
        **({"training": training} if training else {}),
        "config": resolved if resolved is not None else OmegaConf.to_container(
            OmegaConf.structured(cfg), enum_to_str=True),
        "provenance": provenance.provenance(started_at, data),
        "files": {name: results.file_record(out / name) for name in sorted(written)},
    }
    results.write_json(summary, out / results.SUMMARY)
    name = job_name(cfg)
    sizes = f"T={x.shape[2]} H={cfg.hidden_size} S={cfg.seeds}"
    for h in headlines:
        log_headline(name, sizes, cfg.probe.loss_at.value, h, summary["status"], wall)
    if training:
        log.info("%s", dynamics.trained_line(headlines[0], training["headline"],
                                             cfg.init.name.value))
        final = {k: training.get(f"final_{k}") for k in ("train_loss", "train_ppl", "val_loss",
                                                          "val_ppl", "val_accuracy")}
        log.info("trained %d steps: %s, clipping active in %.1f%% of steps, diverged seeds %s",
                 steps, progress_line(final, task.kind == "tokens"),
                 100 * training["clip_fraction"], training["diverged_seeds"] or "none")
    return summary, grad_norms, metrics
