"""Fitting a job into memory.

Device memory: a job's vmapped networks run in one compiled call, or as `jax.lax.map` over
chunks of networks when all at once would not fit. The plan multiplies XLA's estimate of the
call by a factor calibrated against measured peaks (`PEAK_FACTOR`), and a call that still runs
out of memory (RESOURCE_EXHAUSTED, while compiling or running) is retried with half the chunk.

Host memory: `host_bytes` estimates what a job holds outside its compiled calls (parameters,
batches, the per-timestep outputs as tables), so that validation can refuse a job the machine
cannot hold before anything is allocated.
"""

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from rnnjax.core.mnist import MNIST_IMAGES, MNIST_TASKS
from rnnjax.core.tasks import NUM_TRAIN, TIMEMACHINE_FILE, cache_dir, task_shape

log = logging.getLogger("rnnjax")

FREE_FRACTION = 0.8  # of the free device memory a job may plan for by default

# Measured peak memory of a call divided by XLA's estimate of it (`compiled_bytes`). On an H100
# the probe's measured peak (memory_stats()["peak_bytes_in_use"]) was 3.0-3.1x the hidden-state
# trajectory at T >= 1024 and 4.3x at T = 256 where XLA planned 2.0x: up to 2.15x XLA's
# estimate, so 2.25. On a CPU the peak resident memory (VmHWM) grew by 0.9-1.08x XLA's
# estimate (T from 256 to 1024, H 24 to 128, B 32 to 512, all at once and in lax.map chunks):
# 1.1. Other platforms: as a GPU.
PEAK_FACTOR = {"cpu": 1.1, "gpu": 2.25}
DEFAULT_PEAK_FACTOR = 2.25


def compiled_bytes(compiled) -> int:
    """Peak memory XLA plans for a compiled call: arguments, outputs and temporaries."""
    m = compiled.memory_analysis()
    if m is None:  # a backend without the analysis
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def _proc_kib(path: str, field: str) -> int | None:
    """The `FIELD:   N kB` line of a /proc file, in bytes (None when unreadable)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...), in bytes (None when unknown)."""
    return _proc_kib("/proc/self/status", field)


def host_available() -> int | None:
    """MemAvailable of /proc/meminfo, in bytes (None when unknown)."""
    return _proc_kib("/proc/meminfo", "MemAvailable")


def resident_bytes() -> int:
    """This process's resident memory (RSS), in bytes (0 when unknown)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_resident_bytes() -> int:
    """This process's peak resident memory (VmHWM of /proc/self/status), in bytes (0 when
    unknown). Unlike getrusage's ru_maxrss, it does not count the memory of the parent that
    started the program (Linux carries that over exec)."""
    return status_bytes("VmHWM") or 0


def _device(device=None):
    return device or jax.devices()[0]


def in_use_bytes(device=None) -> int:
    """Memory the job holds on `device` (default: the first) now: the allocator's bytes in use on
    an accelerator, the process's resident memory on a CPU (where the host is the device)."""
    device = _device(device)
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_in_use" in stats:
        return int(stats["bytes_in_use"])
    return resident_bytes()


def free_bytes(device=None) -> int | None:
    """Free memory of `device` (default: the first): the allocator's limit minus what is in
    use on an accelerator, MemAvailable of /proc/meminfo on a CPU; None when unknown."""
    device = _device(device)
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return host_available()


def memory_budget(max_gb: float | None) -> int | None:
    """The peak memory a job may reach on its device, in bytes: `max_gb` GiB if given, else what
    it holds now plus 80% of the free memory; None when unknown (no limit).

    The budget counts everything the job holds on the device (on a CPU: the process's resident
    memory), so with `max_gb` the measured peak stays under it.
    """
    if max_gb is not None:
        return int(max_gb * 2**30)
    free = free_bytes()
    return None if free is None else in_use_bytes() + int(FREE_FRACTION * free)


def peak_factor(device=None) -> float:
    """Measured peak / XLA's estimate on the device's platform (see PEAK_FACTOR)."""
    return PEAK_FACTOR.get(_device(device).platform, DEFAULT_PEAK_FACTOR)


def is_resource_exhausted(e: BaseException) -> bool:
    """Whether `e` is XLA running out of device memory (while compiling or running a call)."""
    runtime = isinstance(e, jax.errors.JaxRuntimeError) or type(e).__name__ in (
        "XlaRuntimeError", "JaxRuntimeError")
    return runtime and "RESOURCE_EXHAUSTED" in str(e)


class MemoryPlan(NamedTuple):
    """How a vmapped call over `networks` networks is fitted into `budget`."""

    networks: int  # S: networks of the call (seeds x init values)
    chunk: int  # networks per chunk; == networks: all at once
    per_network: int  # planned peak bytes per network in a chunk (XLA's temp x PEAK_FACTOR)
    fixed: int  # planned bytes that do not shrink with the chunk: held now + the outputs
    budget: int | None  # bytes the job's peak may reach; None: no limit

    def peak(self, chunk: int | None = None) -> int:
        """The planned peak with `chunk` networks at a time (default: the plan's chunk),
        counting the remainder chunk that `jax.lax.map` runs beside the others."""
        return self.fixed + chunk_units(self.networks,
                                        self.chunk if chunk is None else chunk) * self.per_network


def chunk_units(networks: int, chunk: int) -> int:
    """Networks whose temporaries are live at once when `jax.lax.map` runs `networks` in chunks
    of `chunk`: the chunk, plus the remainder (networks % chunk), which XLA runs as a separate
    vmap whose buffers it does not share with the loop's (measured on a CPU: 16 networks in
    chunks of 6 planned 10 networks' temporaries)."""
    chunk = min(chunk, networks)
    return chunk + networks % chunk


def balanced_chunk(networks: int, units: int) -> int:
    """The largest chunk whose `chunk_units` are at most `units` (at least 1)."""
    for chunk in range(min(units, networks), 1, -1):
        if chunk_units(networks, chunk) <= units:
            return chunk
    return 1


def plan_chunk(networks: int, per_network: int, fixed: int, budget: int | None) -> MemoryPlan:
    """The largest chunk of networks whose planned peak (`MemoryPlan.peak`) fits in `budget`
    (at least 1, at most `networks`)."""
    if budget is None or per_network <= 0:
        return MemoryPlan(networks, networks, per_network, fixed, budget)
    units = max(1, (budget - fixed) // per_network)
    return MemoryPlan(networks, balanced_chunk(networks, int(units)), per_network, fixed, budget)


def _networks(args: Sequence, in_axes: Sequence[int | None]) -> int:
    return next(jax.tree.leaves(a)[0].shape[0] for a, ax in zip(args, in_axes, strict=True)
                if ax == 0)


def _compile(f: Callable, in_axes: Sequence[int | None], args: Sequence, chunk: int):
    """`jax.jit(jax.vmap(f))` compiled for `args` when `chunk` covers every network, else the
    same computation as `jax.lax.map` over chunks of `chunk` networks (one compiled call)."""
    in_axes = tuple(in_axes)
    if chunk >= _networks(args, in_axes):
        return jax.jit(jax.vmap(f, in_axes=in_axes)).lower(*args).compile()
    mapped = [i for i, ax in enumerate(in_axes) if ax == 0]

    def chunked(*a):
        def one(xs):
            full_args = list(a)
            for i, x in zip(mapped, xs, strict=True):
                full_args[i] = x
            return f(*full_args)

        return jax.lax.map(one, [a[i] for i in mapped], batch_size=chunk)

    return jax.jit(chunked).lower(*args).compile()


def _analysis(compiled) -> tuple[int, int]:
    """(temporary bytes, output bytes) XLA plans for a compiled call ((0, 0): no analysis)."""
    m = compiled.memory_analysis()
    return (0, 0) if m is None else (int(m.temp_size_in_bytes), int(m.output_size_in_bytes))


def _compile_estimate(f: Callable, in_axes: Sequence[int | None], args: Sequence
                      ) -> tuple[int, int, Any]:
    """(temporary bytes per network, output bytes of all networks, the compiled call of all
    networks or None), from XLA's analysis of all networks at once or, when compiling that
    runs out of memory itself, of one network."""
    S = _networks(args, in_axes)
    try:
        compiled = _compile(f, in_axes, args, S)
    except Exception as e:
        if not is_resource_exhausted(e):
            raise
        log.warning("compiling %d networks at once ran out of device memory: planning from one",
                    S)
        one = [jax.tree.map(lambda a: a[:1], a) if ax == 0 else a
               for a, ax in zip(args, in_axes, strict=True)]
        temp, out = _analysis(_compile(f, in_axes, one, 1))
        return temp, out * S, None
    temp, out = _analysis(compiled)
    return math.ceil(temp / S), out, compiled


def _halved(networks: int, chunk: int) -> int:
    return balanced_chunk(networks, max(1, min(chunk, networks) // 2))


class SeedChunks:
    """A job's vmapped call over its networks, fitted into memory (see `fit_seeds`): callable
    with the arguments of the plain `jax.jit(jax.vmap(f))`, with the same results.

    When compiling or running raises RESOURCE_EXHAUSTED, the chunk is halved, the call
    recompiled and run again, and the log says so; with one network per chunk the error is
    raised. The arguments are never donated, so a failed call can be repeated.
    """

    def __init__(self, f: Callable, in_axes: Sequence[int | None], plan: MemoryPlan, what: str,
                 compiled=None):
        self.f, self.in_axes, self.plan, self.what = f, tuple(in_axes), plan, what
        self._compiled = compiled

    @property
    def chunk(self) -> int:
        return self.plan.chunk

    def _retry(self, e: Exception) -> None:
        """Halves the chunk after RESOURCE_EXHAUSTED (re-raises anything else, or at 1)."""
        if not is_resource_exhausted(e) or self.chunk == 1:
            raise e
        half = _halved(self.plan.networks, self.chunk)
        log.warning("%s: out of device memory with chunks of %d networks (RESOURCE_EXHAUSTED): "
                    "retrying in %d chunks of %d", self.what, self.chunk,
                    math.ceil(self.plan.networks / half), half)
        self.plan = self.plan._replace(chunk=half)
        self._compiled = None

    def compile(self, args: Sequence):
        """The compiled call for `args` at the current chunk (halving it while compiling runs
        out of memory)."""
        while self._compiled is None:
            try:
                self._compiled = _compile(self.f, self.in_axes, args, self.chunk)
            except Exception as e:
                self._retry(e)
        return self._compiled

    def __call__(self, *args):
        while True:
            compiled = self.compile(args)
            try:
                # Wait for the result: a device running out of memory may only say so then.
                return jax.block_until_ready(compiled(*args))
            except Exception as e:
                self._retry(e)


def fit_seeds(f: Callable, in_axes: Sequence[int | None], args: Sequence, budget: int | None,
              what: str) -> SeedChunks:
    """`jax.jit(jax.vmap(f, in_axes))` for `args`, or, when its planned peak exceeds `budget`,
    the same computation as `jax.lax.map` over chunks of networks that fit (one compiled call;
    the networks of a chunk are vmapped). Says so in the log, and says when one network alone
    exceeds the budget.

    The planned peak of a call is what the device holds once it is compiled (`in_use_bytes`),
    plus its outputs, plus XLA's temporary memory times `peak_factor()` (XLA underestimates the
    measured peak on a GPU). The chunk is first sized from the call of all networks, then
    checked against XLA's analysis of the chunked call itself and made smaller until it fits.
    A call that still runs out of memory retries with half the chunk (`SeedChunks`).

    Args:
      f: a function of one network's arguments.
      in_axes: 0 for arguments with a leading network axis, None for shared ones.
      args: example arguments (shapes and dtypes of every later call).
      budget: bytes the job's peak may reach (`memory_budget`); None: no limit.
      what: the call's name for the log ("probe", "training").

    Returns:
      A callable of the same arguments, with the same results as the plain vmap; its `plan`
      (a MemoryPlan) says how it runs.
    """
    S = _networks(args, in_axes)
    started = time.perf_counter()
    log.info("%s: compiling for %d networks ...", what, S)
    factor = peak_factor()
    temp, outputs, compiled = _compile_estimate(f, in_axes, args)
    plan = plan_chunk(S, math.ceil(factor * temp), in_use_bytes() + outputs, budget)
    need_all = plan.peak(S)
    calls = SeedChunks(f, in_axes, plan, what, compiled if plan.chunk == S else None)
    while budget is not None and calls.chunk > 1:
        # The chunked program as compiled: its own temporaries, with what compiling it left.
        chunk_peak = math.ceil(factor * _analysis(calls.compile(args))[0])
        held = in_use_bytes()
        if held + outputs + chunk_peak <= budget:
            break
        units = chunk_units(S, calls.chunk)
        fit = int(units * max(0, budget - held - outputs) / max(chunk_peak, 1))
        calls.plan, calls._compiled = plan._replace(
            chunk=balanced_chunk(S, min(units - 1, fit))), None
    if calls.chunk < S:
        log.info("%s: %d seeds need %.3g GB at once, over the %.3g GB budget: running them in "
                 "%d chunks of %d seeds (jax.lax.map)", what, S, need_all / 1e9, budget / 1e9,
                 math.ceil(S / calls.chunk), calls.chunk)
    if budget is not None and calls.chunk == 1 and plan.peak(1) > budget:
        log.warning("%s: one network alone needs %.3g GB (planned peak, with what the job "
                    "holds now), over the %.3g GB budget: running one at a time anyway", what,
                    plan.peak(1) / 1e9, budget / 1e9)
    calls.compile(args)
    log.info("%s: compiled in %.1f s", what, time.perf_counter() - started)
    return calls


# ------------------------------------------------------------------------------- host memory

ROW_BYTES = 500  # per row of grad_norms.parquet in memory: the frames, their concatenation
# and the parquet writer (measured: 200 bytes per row for a frame, 263 at the writer's peak)


class HostJob(NamedTuple):
    """What the host memory of a job depends on (`host_bytes`)."""

    networks: int  # seeds x init values
    T: int  # timesteps
    batch_size: int  # B
    hidden_size: int  # H
    inputs: int  # D
    outputs: int  # Q
    dtype_bytes: int  # 4 (float32) or 8 (float64)
    profiles: int  # gradient profiles logged (1 + logged training steps)
    training: bool  # whether the job trains
    input_channels: int = 1  # values per input step (2 for task=adding, else 1 token id)
    text_windows: int = 0  # windows of seq_len + 1 tokens a text task keeps (0: generated)


def host_bytes(job: HostJob) -> int:
    """Host memory a job needs outside its compiled calls, in bytes (an estimate).

    Parameters (a device copy and a numpy copy; with training also the trained parameters and
    two optimizer moments; counted as a vanilla RNN's), the probed batches x and y (and their
    numpy copies), the windows of a text task, and the per-timestep outputs as table rows
    (`ROW_BYTES` per row, networks x T rows per logged profile).
    """
    networks, T, B = job.networks, job.T, job.batch_size
    H, D, Q = job.hidden_size, job.inputs, job.outputs
    params = (networks * (D * H + H * H + H + H * Q + Q) * job.dtype_bytes
              * (5 if job.training else 2))
    batches = 2 * networks * B * T * 4 * (job.input_channels + 1)
    windows = job.text_windows * (T + 1) * 4
    rows = networks * T * job.profiles * ROW_BYTES
    return params + batches + windows + rows


_SIZE_KEYS = ("seeds", "seq_len", "hidden_size", "batch_size")


def _text_bytes(cfg) -> int:
    """The size of the text file a task=timemachine job would read (0 when not found yet): an
    upper bound on its characters."""
    if cfg.task.path is not None:
        p = Path(cfg.task.path).expanduser()
    elif os.environ.get("RNNJAX_DATA"):
        p = Path(os.environ["RNNJAX_DATA"]).expanduser() / TIMEMACHINE_FILE
    else:
        p = cache_dir() / TIMEMACHINE_FILE
    try:
        return p.stat().st_size if p.is_file() else 0
    except OSError:
        return 0


def host_memory_error(cfg, networks: int) -> str | None:
    """The error line for a job (a validated rnnjax.app.config.Config of `networks` networks:
    seeds x init values) whose parameters, batches and outputs alone need more host memory than
    the host has available (MemAvailable): the kernel's OOM killer would end it without a word.
    None when it fits or MemAvailable is unknown.

    The key named is the size furthest above its default; the message gives the estimate.
    """
    from rnnjax.app.config import Config  # the schema's defaults (Hydra): only when validating

    available = host_available()
    if available is None:
        return None
    task = cfg.task.name.value
    T, D, Q = task_shape(task, cfg.seq_len, cfg.task.vocab_size, cfg.task.tokens,
                         cfg.task.symbols)
    tr = cfg.train
    steps = (tr.epochs * -(-NUM_TRAIN // cfg.batch_size) if tr.epochs is not None
             else tr.steps)
    need = host_bytes(HostJob(
        networks=networks, T=T, batch_size=cfg.batch_size,
        hidden_size=cfg.hidden_size, inputs=D, outputs=Q,
        dtype_bytes=np.dtype(cfg.dtype.value).itemsize,
        profiles=1 + (-(-steps // tr.log_every) if steps else 0), training=bool(steps),
        input_channels=2 if task == "adding" else 1,
        # MNIST's images as windows of T + 1 int32 tokens: an upper bound of their bytes
        text_windows=(_text_bytes(cfg) if task == "timemachine"
                      else MNIST_IMAGES if task in MNIST_TASKS else 0)))
    if need > available:
        default = Config()
        key = max(_SIZE_KEYS, key=lambda k: getattr(cfg, k) / getattr(default, k))
        sizes = " ".join(f"{k}={getattr(cfg, k)}" for k in _SIZE_KEYS if k != key)
        return (f"{key}={getattr(cfg, key)} is invalid: with {sizes} the job needs about "
                f"{need / 1e9:,.1f} GB of host memory for its parameters, batches and outputs, "
                f"more than the {available / 1e9:,.1f} GB available (MemAvailable); use a "
                f"smaller {key}")
    return None
