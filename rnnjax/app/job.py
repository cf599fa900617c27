"""One job: initialize S networks, probe them (and train them) with vmap, write the results."""

import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from rnnjax.app import dynamics, flossing, provenance, results, timemap, tracking
from rnnjax.app.config import Config
from rnnjax.app.locks import JobBusy, holding_job_lock, job_lock  # noqa: F401 (re-exported)
from rnnjax.app.memory import fit_seeds, memory_budget
from rnnjax.app.progress import (
    interval_rows,
    log_progress,
    number,
    progress_line,
    sample_text,
)
from rnnjax.app.summary import headline, label_keys, log_headline, theory_summary, to_host
from rnnjax.app.validate import cell_options, init_values
from rnnjax.core.cells import Cell, registry
from rnnjax.core.cells.stack import stack
from rnnjax.core.probes import make_probe
from rnnjax.core.scan import resolve_scan
from rnnjax.core.tasks import DataError, Task, cache_dir, make_task
from rnnjax.core.train import (
    Training,
    init_state,
    make_accuracy,
    make_eval,
    make_optimizer,
    make_train_chunk,
)

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


def scan_of(cfg: Config, cell: Cell) -> str:
    """probe.scan for the job's cell: null resolves to parallel where the cell is linear in its
    state (`rnnjax.core.scan.resolve_scan`); the probe, training and evaluation all use it."""
    return resolve_scan(cell, None if cfg.probe.scan is None else cfg.probe.scan.value)


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


def total_steps(cfg: Config, task: Task) -> int:
    """train.steps, or train.epochs passes over the training windows."""
    if cfg.train.epochs is not None:
        return cfg.train.epochs * task.steps_per_epoch
    return cfg.train.steps


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


class JobRun(NamedTuple):
    """One job as `run_job` has set it up: what probing, training and writing it need."""

    cfg: Config
    cell: Cell
    task: Task
    data: dict | None  # the data file's record (`provenance.data_file`), None for generated data
    params: Any  # the networks' parameters, leading axis N = init values x seeds
    x: jax.Array  # (N, B, T...) the probed batches
    y: jax.Array  # their targets
    data_keys: jax.Array  # (N, 2) keys of each network's training data and validation set
    budget: Any  # `memory.memory_budget`'s
    out: Path  # the job's directory
    resolved: dict[str, Any] | None  # the resolved config written to summary.json
    started_at: str  # `provenance.now()` at the start
    start: float  # `time.perf_counter()` at the start


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


def profile_truncation(cfg: Config) -> int | None:
    """The profile shows the gradient that training uses: cut every k steps for truncated
    BPTT. Randomized truncation is unbiased, so its expected profile is the full one."""
    return cfg.train.truncate if cfg.train.bptt.value == "truncated" else None


def train_job(run: JobRun, probe, frames: list, columns: dict, step_theory):
    """Trains all seeds together; returns the profile frames (`frames` with the training's
    profiles added) and the training summary (with the metrics DataFrame under "metrics").

    Args:
      run: the job. probe: its fitted probe, for the profiles while training. columns: the
        config columns of every frame. step_theory: a `dynamics.StepTheory`, the headline,
        theory and spectrum of each logged step (the training summary's "logged": (step,
        `dynamics.StepNumbers`) of each).
    """
    cfg, cell, task, params, x, y, data_keys, budget = (
        run.cfg, run.cell, run.task, run.params, run.x, run.y, run.data_keys, run.budget)
    steps = total_steps(cfg, task)
    seeds = np.arange(cfg.seed, cfg.seed + cfg.seeds)
    tr = cfg.train
    loss_at = cfg.probe.loss_at.value
    tx = make_optimizer(tr.optimizer.value, tr.lr, tr.clip, tr.clip_value, tr.initial_scale)
    n = min(tr.log_every, steps)
    scan = scan_of(cfg, cell)
    evaluate = jax.jit(jax.vmap(make_eval(cell, loss_at, task.kind, scan)))
    val_x, val_y = jax.vmap(task.val_batch)(data_keys[:, 1])
    params, floss = flossing.before_training(cfg, cell, task, tx, params, data_keys, val_x)
    state = jax.vmap(init_state, (0, None))(params, tx)
    chunk = fit_seeds(make_train_chunk(Training(
        cell, loss_at, task.kind, tx, task.train_batch, steps, n, tr.bptt.value, tr.truncate,
        tr.clip, tr.clip_value, task.chunk_batches, scan, flossing.during(cfg))),
                      (0, 0, None), (state, data_keys[:, 0], jnp.asarray(0)), budget, "training")

    rows = []
    profiles = []  # (train_step, Profile) of each interval: one frame for all after the loop
    logged = []  # (train_step, dynamics.StepNumbers) of each interval
    n_clipped = n_taken = 0
    tokens = task.kind == "tokens"

    accuracy = task.accuracy and jax.jit(jax.vmap(make_accuracy(cell, task.accuracy)))
    def measure(params):
        """The validation loss (and accuracy) and the gradient profile of the networks."""
        acc = None if accuracy is None else np.asarray(accuracy(params, val_x, val_y))
        prof = to_host(probe(params, x, y))
        return np.asarray(evaluate(params, val_x, val_y)), acc, prof, step_theory(params, prof)

    def log_interval(begin, state, m, measured):
        nonlocal n_clipped, n_taken
        val, acc, prof, nums = measured.result()
        m = jax.tree.map(np.asarray, m)
        n_clipped += int(m.clipped.sum())
        n_taken += int(m.active.sum())
        done = min(begin + n, steps)
        profiles.append((done, prof))
        logged.append((done, nums))
        rows.extend(interval_rows(seeds, done, m, val, np.asarray(state.alive), tokens, acc))
        bar.update(done - begin)
        # the numbers a tracker gets for this step (`tracking.log_results`)
        recent = tracking.interval_metrics(pd.DataFrame(rows[-len(seeds):]))
        bar.set_postfix(loss=number(recent['train_loss'], 4))
        # Without a terminal (SLURM logs, nohup) a plain line instead of the bar; with one, the
        # line still goes to run.log, which holds the same lines either way.
        log_progress(bar.disable, "step %d of %d: %s", done, steps, progress_line(recent, tokens))

    # Each interval's validation and profile run in a second thread while the next interval
    # trains (XLA releases the GIL): the training step alone keeps less than two CPU cores
    # busy. Measured on a 2-core CPU at d2l's sizes: 95 -> 80 ms per interval of 10 steps.
    with tqdm(total=steps, desc="train", unit="step", dynamic_ncols=True,
              disable=None) as bar, ThreadPoolExecutor(1) as pool:
        pending = None
        for begin in range(0, steps, n):
            state, m = chunk(state, data_keys[:, 0], jnp.asarray(begin))
            measured = pool.submit(measure, state.params)
            if pending is not None:
                log_interval(*pending)
            pending = (begin, state, m, measured)
        if pending is not None:
            log_interval(*pending)

    if profiles:
        # One frame for every interval (rows ordered by interval, seed, t, as one frame each
        # would give): a pandas frame costs milliseconds to build, whatever its length.
        done = np.array([d for d, _ in profiles])
        stacked = jax.tree.map(lambda *a: np.concatenate(a), *[p for _, p in profiles])
        rows_each = len(seeds) * stacked.grad_norm[0].size  # S T (L): rows of one profile
        frames.append(results.probe_frame(np.tile(seeds, len(profiles)), stacked, columns,
                                          train_step=np.repeat(done, rows_each)))
    metrics = results.with_config_columns(
        dynamics.metrics_columns(pd.DataFrame(rows), seeds, logged, cfg.init.name.value), columns)
    diverged = np.asarray(state.diverged_at)
    last = metrics[metrics.train_step == metrics.train_step.max()]
    training = {
        "metrics": metrics,
        "logged": logged,
        "steps": steps,
        # means over the networks as the log and a tracker give them (an overflowed
        # perplexity is inf there too, not left out)
        "final_train_loss": tracking.mean_over_networks(last.train_loss),
        "final_train_ppl": tracking.mean_over_networks(last.train_ppl) if tokens else None,
        "final_val_loss": tracking.mean_over_networks(last.val_loss),
        "final_val_ppl": tracking.mean_over_networks(last.val_ppl) if tokens else None,
        **({"final_val_accuracy": tracking.mean_over_networks(last.val_accuracy)}
           if accuracy is not None else {}),
        "final_val_ppl_per_seed": last.val_ppl.tolist() if tokens else None,
        "final_train_ppl_per_seed": last.train_ppl.tolist() if tokens else None,
        "clip_fraction": n_clipped / max(n_taken, 1),  # over every step every seed took
        "diverged_seeds": {int(s): int(d) for s, d in zip(seeds, diverged, strict=True) if d >= 0},
    }
    if floss is not None:  # train.floss.k: the exponents before and after (rnnjax.app.flossing)
        training["floss"] = flossing.summary(cfg, cell, floss, state.params, val_x)
    if task.vocab is not None:
        training["sample"] = sample_text(cell, task, state.params)
        log.info("sample (seed %d): %r", seeds[0], training["sample"])
    return frames, training
