"""Fitting a job's vmapped seeds into memory: XLA's own estimate of a compiled call, the
memory the device has free, and `jax.lax.map` in chunks of seeds when all of them at once
would not fit.
"""

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

log = logging.getLogger("rnnjax")

FREE_FRACTION = 0.8  # of the free device memory one call may plan for


def compiled_bytes(compiled) -> int:
    """Peak memory XLA plans for a compiled call: arguments, outputs and temporaries."""
    m = compiled.memory_analysis()
    if m is None:  # a backend without the analysis
        return 0
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def free_bytes(device=None) -> int | None:
    """Free memory of `device` (default: the first): the allocator's limit minus what is in
    use on an accelerator, MemAvailable of /proc/meminfo on a CPU; None when unknown."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_budget(max_gb: float | None) -> int | None:
    """Bytes one call may use: `max_gb` if given, else 80% of the free device memory."""
    if max_gb is not None:
        return int(max_gb * 2**30)
    free = free_bytes()
    return None if free is None else int(FREE_FRACTION * free)


def fit_seeds(f: Callable, in_axes: Sequence[int | None], args: Sequence, budget: int | None,
              what: str) -> Callable:
    """`jax.jit(jax.vmap(f, in_axes))`, compiled for `args`, or, when XLA's estimate of that
    call exceeds `budget` bytes, the same computation as `jax.lax.map` over chunks of seeds
    that fit (one compiled call; the seeds of a chunk are vmapped). Says so in the log.

    Args:
      f: a function of one seed's arguments.
      in_axes: 0 for arguments with a leading seed axis, None for shared ones.
      args: example arguments (shapes and dtypes of every later call).
      budget: bytes one call may use; None: no limit.
      what: the call's name for the log ("probe", "training").

    Returns:
      A function of the same arguments, with the same results as the plain vmap.
    """
    full = jax.jit(jax.vmap(f, in_axes=tuple(in_axes)))
    compiled = full.lower(*args).compile()
    need = compiled_bytes(compiled)
    S = next(jax.tree.leaves(a)[0].shape[0] for a, ax in zip(args, in_axes, strict=True)
             if ax == 0)
    if budget is None or need <= budget or S == 1:
        if budget is not None and need > budget:
            log.warning("%s: one network needs %.2f GB, over the %.2f GB budget; running it "
                        "anyway", what, need / 1e9, budget / 1e9)
        return compiled
    chunk = max(1, min(S - 1, int(budget // math.ceil(need / S))))
    mapped = [i for i, ax in enumerate(in_axes) if ax == 0]

    def chunked(*a):
        def one(xs):
            full_args = list(a)
            for i, x in zip(mapped, xs, strict=True):
                full_args[i] = x
            return f(*full_args)

        return jax.lax.map(one, [a[i] for i in mapped], batch_size=chunk)

    log.info("%s: %d seeds need %.2f GB at once, over the %.2f GB budget: running them in %d "
             "chunks of %d seeds (jax.lax.map)", what, S, need / 1e9, budget / 1e9,
             math.ceil(S / chunk), chunk)
    return jax.jit(chunked).lower(*args).compile()
