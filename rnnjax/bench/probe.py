"""Benchmark of the probe: per-timestep gradient norms ||dL/dH_t||_F, three ways.

One network (d2l's vanilla tanh RNN: B = 32 random token sequences over a 28-token vocabulary,
H = 256, every weight N(0, 0.01^2), biases zero, loss = mean softmax cross-entropy over all
steps) and one batch, for each T; three implementations compute grad_norm (T,) side by side:

  rnnjax            `jax.jit(make_probe(vanilla("tanh"), "all"))` (rnnjax.core.probes) with its
                    default `unroll` on this backend, BPTT through lax.scan.
  PyTorch eager     what a PyTorch user writes: a Python loop over time, `H_t.retain_grad()` on
                    every step, `.backward()`, then the norms of every `H_t.grad`. The weights
                    are leaves that require grad (as in d2l), so their gradients are computed
                    too. All CPU threads; on CUDA when available.
  JAX Python loop   d2l's JAX RNN-from-scratch style: a Python `for` loop over the T steps inside
                    one jitted function (no scan), dL/dH_t from `jax.grad` with respect to
                    additive zero perturbations of H_t. Its program, and its compile time, grow
                    with T, so T above `--loop-max-t` is skipped.

Reported per implementation and T: compile time (JAX: trace + lower + compile, timed with
`.lower(...).compile()`; PyTorch: n.a.), the median of `--repeats` calls (each blocked until
ready; the implementations take turns, call by call, so that a change of the machine's load
touches them alike), its ratio to rnnjax's median, achieved GFLOP/s (`probe_flops`) against this
machine's measured dense float32 matmul rate, and the largest relative difference of grad_norm
from rnnjax's (< 1e-3 in float32).

Also:
  unroll      rnnjax's run and compile times for each `--unrolls` value (`probe.unroll`), and
              each one's compile-time growth from the smallest T to the largest.
  memory      rnnjax with `--mem-seeds` networks vmapped, for probe.loss_at = all and last, each
              (T, loss_at) in a fresh process: the MEASURED peak of the call (a GPU: the device's
              `memory_stats()['peak_bytes_in_use']` minus what was in use before, the program
              loaded from a compilation cache that an earlier process filled, so compiling and
              autotuning do not set the peak; a CPU: the peak RSS, VmHWM, after its mark was
              reset, minus the RSS before), and XLA's `memory_analysis()` estimate, both as
              multiples of the hidden-state trajectory S*T*B*H*4 bytes.
  sweep       `--sweep-seeds` networks vmapped at T = `--sweep-t`: network-timesteps per second.

On a GPU the same command runs JAX and PyTorch on the card (sweep default 256 networks); the
tables name the card.

Usage: rnnjax bench [--T 16 256 1024 4096] [--repeats 5] [--unrolls 1 2 4 8 16]
           [--loop-max-t 1024] [--mem-seeds 8] [--sweep-seeds N] [--sweep-t 1024]
           [--skip-torch] [--skip-loop] [--quick] [--out FILE]
       (or python experiments/bench.py ...)

The JSON goes to a new file under results/runs/bench/ (git-ignored) unless --out names one:
`rnnjax bench --out results/bench.json` is the one command that replaces the repository's
reference; a --quick run refuses to replace a full run's results.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

# Before JAX starts: GPU memory statistics mean something only without preallocation.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from rnnjax.app.memory import status_bytes  # noqa: E402
from rnnjax.bench.common import (  # noqa: E402
    TORCH_HINT,
    busy_warning,
    git_state,
    import_torch,
    interleaved,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    reset_peak_rss,
    size,
    summary,
    time_calls,
    write_json,
)
from rnnjax.cli import RUNS, default_out, output_file  # noqa: E402
from rnnjax.core.cells import RNNParams, vanilla  # noqa: E402
from rnnjax.core.cells.vanilla import init_params  # noqa: E402
from rnnjax.core.init import normal  # noqa: E402
from rnnjax.core.probes import default_unroll, make_probe  # noqa: E402

VOCAB, STD, SEED = 28, 0.01, 0
FULL = {"B": 32, "H": 256, "T": [16, 256, 1024, 4096], "matmul_n": 2048, "repeats": 5,
        "mem_seeds": 8, "sweep_t": 1024, "unrolls": [1, 2, 4, 8, 16]}
QUICK = {"B": 4, "H": 16, "T": [4, 16], "matmul_n": 256, "repeats": 2, "mem_seeds": 2,
         "sweep_t": 16, "unrolls": [1, 2]}
SWEEP_SEEDS = {"cpu": 16, "gpu": 256, "quick": 2}  # default --sweep-seeds by platform
LOSS_AT = ("all", "last")
FEWER_REPEATS_FROM_T = 4096  # at least this long: at most 3 timed calls
IMPLS = ("rnnjax", "pytorch_eager", "jax_loop")
LABELS = {"rnnjax": "rnnjax", "pytorch_eager": "PyTorch eager", "jax_loop": "JAX loop"}


def probe_flops(T: int, B: int, H: int, Q: int = VOCAB) -> int:
    """Nominal FLOPs of one network's forward and backward pass through T steps.

    Per step, the recurrent product H_{t-1} W_hh is a (B, H) x (H, H) matmul, 2*B*H*H FLOPs
    forward and twice that backward (dL/dH_{t-1} = dL/dA_t W_hh^T, dL/dW_hh += H_{t-1}^T dL/dA_t);
    the read-out H_t W_hq costs 2*B*H*Q forward and twice that backward:

        FLOPs = 3 * 2 * T * B * H * (H + Q)

    Elementwise work (tanh, softmax, norms) and the input row lookups are not counted. The count
    is the same for every implementation, so ratios of GFLOP/s are ratios of speed. rnnjax and
    the JAX loop differentiate with respect to the states only, so XLA drops the weight
    gradients and 2/3 of this count is strictly needed; PyTorch's `.backward()` computes them.
    """
    return 6 * T * B * H * (H + Q)


# ---------------------------------------------------------------- inputs

@partial(jax.jit, static_argnames=("B", "H", "T"))
def make_inputs(key, B, H, T):
    """d2l's normal(0.01) network and a batch of random tokens with next-token targets.

    Returns:
      params: RNNParams, W_xh (28, H), W_hh (H, H), b_h (H,), W_hq (H, 28), b_q (28,).
      x, y: (B, T) int32.
    """
    k_params, k_tokens = jax.random.split(key)
    params = init_params(k_params, normal(STD), normal(STD), VOCAB, H, VOCAB)
    tokens = jax.random.randint(k_tokens, (B, T + 1), 0, VOCAB, dtype=jnp.int32)
    return params, tokens[:, :-1], tokens[:, 1:]


def stacked_inputs(S, B, H, T):
    """Networks and batches of seeds SEED..SEED+S-1 stacked on a leading axis, as a sweep runs
    them (stacked on the host: one compiled make_inputs per shape, whatever S)."""
    each = [make_inputs(jax.random.key(SEED + s), B=B, H=H, T=T) for s in range(S)]
    return jax.tree.map(lambda *a: jnp.asarray(np.stack(a)), *each)


def rnnjax_probe(loss_at="all", unroll=None):
    """rnnjax's probe of the vanilla tanh RNN (unroll None: the backend's default)."""
    return make_probe(vanilla("tanh"), loss_at, unroll=unroll)


# ---------------------------------------------------------------- JAX Python loop (d2l style)

def loop_probe(params: RNNParams, x, y):
    """grad_norm (T,) from a Python loop over time, unrolled by jit (d2l's JAX scratch RNN).

    dL/dH_t is the gradient with respect to a zero perturbation added to H_t; the perturbations
    are T separate (B, H) arrays, so that each gradient is one output, not a slice of one array.
    """
    B, T = x.shape
    H = params.W_hh.shape[0]
    inputs = params.W_xh[x.T]  # (T, B, H): row lookups, the one-hot product X_t W_xh

    def loss_fn(perturbations):
        h = jnp.zeros((B, H), params.W_hh.dtype)
        outputs = []
        for X, dH in zip(inputs, perturbations, strict=True):
            h = jnp.tanh(X + h @ params.W_hh + params.b_h) + dH
            outputs.append(h @ params.W_hq + params.b_q)
        logits = jnp.stack(outputs)  # (T, B, Q)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y.T).mean()

    zeros = tuple(jnp.zeros((B, H), params.W_hh.dtype) for _ in range(T))
    grads = jax.grad(loss_fn)(zeros)
    return jnp.stack([jnp.sqrt(jnp.sum(jnp.square(g))) for g in grads])


# ---------------------------------------------------------------- PyTorch eager

def torch_device(torch):
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_inputs(torch, params, x, y):
    """The same network and batch as PyTorch tensors; the weights are leaves requiring grad."""
    dev = torch_device(torch)
    p = {k: torch.tensor(np.asarray(v), device=dev, requires_grad=True)
         for k, v in params._asdict().items()}
    x, y = (torch.tensor(np.asarray(a), dtype=torch.long, device=dev) for a in (x, y))
    return p, x, y


def torch_probe(torch, p, x, y):
    """grad_norm (T,) as a PyTorch user computes it: retain_grad on every H_t, then backward."""
    F = torch.nn.functional
    B = x.shape[0]
    h = torch.zeros(B, p["W_hh"].shape[0], device=x.device)
    states, outputs = [], []
    for X in p["W_xh"][x.T]:  # (B, H) per step: the row lookup X_t W_xh
        h = torch.tanh(X + h @ p["W_hh"] + p["b_h"])
        h.retain_grad()
        states.append(h)
        outputs.append(h @ p["W_hq"] + p["b_q"])
    logits = torch.stack(outputs)  # (T, B, Q)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.T.reshape(-1))
    for v in p.values():
        v.grad = None
    loss.backward()
    return torch.stack([s.grad for s in states]).flatten(1).norm(dim=1)


def torch_sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- timing

def compile_jax(fn, *args):
    """jax.jit(fn) compiled for args; returns (compiled, trace + lower s, compile s)."""
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lowered_at - start, time.perf_counter() - lowered_at


def grad_norm_of(out):
    """grad_norm (T,) in float64 from a ProbeResult (log10 norms) or a plain array."""
    if hasattr(out, "log10_grad_norm"):
        return 10.0 ** np.asarray(out.log10_grad_norm, np.float64)
    return np.asarray(out, np.float64)


class Prepared:
    """One implementation, ready to be timed: a call that blocks until its result is ready,
    the fields measured while preparing it (compile time, the first call), and its grad_norm."""

    def __init__(self, call, fields, grad_norm):
        self.call, self.fields, self.grad_norm = call, fields, grad_norm


def prepare_jax(fn, args):
    """Compiles fn for args and makes the first call."""
    compiled, lower_s, compile_s = compile_jax(fn, *args)
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    first_s = time.perf_counter() - start
    return Prepared(lambda: jax.block_until_ready(compiled(*args)),
                    {"compile_s": lower_s + compile_s, "trace_lower_s": lower_s,
                     "xla_compile_s": compile_s, "first_call_s": first_s}, grad_norm_of(out))


def prepare_torch(torch, params, x, y):
    """The PyTorch inputs and the first call."""
    torch.set_num_threads(os.cpu_count())
    p, tx, ty = torch_inputs(torch, params, x, y)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    def call():
        norms = torch_probe(torch, p, tx, ty)
        torch_sync(torch)
        return norms

    start = time.perf_counter()
    out = call()
    fields = {"compile_s": None, "first_call_s": time.perf_counter() - start,
              "device": str(tx.device), "threads": torch.get_num_threads()}
    return Prepared(call, fields, out.detach().cpu().double().numpy())


def timed(prepared, runs, flops):
    """A prepared implementation's fields with its timed calls."""
    s = summary(runs)
    return prepared.fields | s | {"gflops": flops / s["run_s_median"] / 1e9}


def max_rel_diff(a, ref):
    """max_t |a_t - ref_t| / |ref_t|."""
    return float(np.max(np.abs(a - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)))


def matmul_rate(n, repeats, torch=None):
    """Measured dense float32 n x n matmul rate in GFLOP/s: jitted JAX, and PyTorch's."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul).lower(a, a).compile()
    jax.block_until_ready(f(a, a))
    median = statistics.median(time_calls(lambda: jax.block_until_ready(f(a, a)), repeats))
    out = {"n": n, "jax_s_median": median, "jax_gflops": 2 * n**3 / median / 1e9}
    if torch is not None:
        torch.set_num_threads(os.cpu_count())
        ta = torch.tensor(np.asarray(a), device=torch_device(torch))

        def call():
            ta @ ta
            torch_sync(torch)

        call()
        median = statistics.median(time_calls(call, repeats))
        out |= {"torch_s_median": median, "torch_gflops": 2 * n**3 / median / 1e9}
    return out


# ---------------------------------------------------------------- memory (a fresh process)

def mem_worker(T, S, B, H, loss_at):
    """Runs in its own process: rnnjax's vmapped probe of S networks at T, once. Returns XLA's
    memory estimate and the measured peak during the call, in bytes."""
    args = jax.block_until_ready(stacked_inputs(S, B, H, T))
    compiled = jax.jit(jax.vmap(rnnjax_probe(loss_at))).lower(*args).compile()
    ma = compiled.memory_analysis()
    estimate = {k: int(getattr(ma, k)) for k in (
        "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
        "alias_size_in_bytes", "generated_code_size_in_bytes")}
    estimate["total_bytes"] = (estimate["temp_size_in_bytes"] + estimate["argument_size_in_bytes"]
                               + estimate["output_size_in_bytes"] - estimate["alias_size_in_bytes"])
    dev = jax.devices()[0]
    if dev.platform == "gpu" and dev.memory_stats():
        before = dev.memory_stats()
        jax.block_until_ready(compiled(*args))
        peak = dev.memory_stats()["peak_bytes_in_use"]
        # The peak mark cannot be reset: it is the call's own peak only when nothing earlier
        # (compiling, autotuning) peaked higher, which the cache-loaded run ensures
        # (`measure_memory`); `peak_bytes_before_call` says whether it did.
        measured = {"method": "memory_stats peak_bytes_in_use - bytes_in_use before the call",
                    "peak_bytes_in_use": peak, "bytes_in_use_before": before["bytes_in_use"],
                    "peak_bytes_before_call": before["peak_bytes_in_use"],
                    "call_set_the_peak": peak > before["peak_bytes_in_use"],
                    "increase_bytes": peak - before["bytes_in_use"]}
    else:
        # The peak RSS mark is reset after compiling, so the call's own peak is what is read.
        if not (reset_peak_rss() and status_bytes("VmHWM") is not None):
            sys.exit("cannot reset the peak RSS mark (/proc/self/clear_refs): no measurement")
        rss_before = status_bytes("VmRSS")
        jax.block_until_ready(compiled(*args))
        measured = {"method": "VmHWM after the call - VmRSS before (peak mark reset)",
                    "rss_before_bytes": rss_before, "vmhwm_after_bytes": status_bytes("VmHWM"),
                    "increase_bytes": status_bytes("VmHWM") - rss_before}
    return {"T": T, "seeds": S, "loss_at": loss_at, "xla_estimate": estimate,
            "measured": measured}


def measure_memory(Ts, S, quick, gpu):
    """mem_worker for each T and loss_at, each in a fresh interpreter (this module with
    --mem-worker), so that every peak is its own; the two losses of one T run at the same time
    (only their memory is measured). On a GPU each runs twice with a shared compilation cache,
    and the second run, which loads its program, counts."""
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "RNNJAX_BENCH_CACHE": cache} if gpu else None
        for T in Ts:
            cmds = [[sys.executable, "-m", "rnnjax.bench.probe", "--mem-worker", str(T),
                     "--mem-seeds", str(S), "--mem-loss-at", loss_at] + ["--quick"] * quick
                    for loss_at in LOSS_AT]
            for _ in range(2 if gpu else 1):
                procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True) for cmd in cmds]
                results = []
                for cmd, proc in zip(cmds, procs, strict=True):
                    stdout, stderr = proc.communicate()
                    if proc.returncode:
                        print(stdout, stderr, sep="\n", file=sys.stderr)
                        sys.exit(f"memory worker failed (exit code {proc.returncode}): "
                                 f"{' '.join(cmd)}")
                    results.append(json.loads(stdout.splitlines()[-1]))
            out += results
    return out


# ---------------------------------------------------------------- the measurements

def bench_one_t(T, sizes, args, torch, unroll):
    """Every implementation at one T, their calls taken in turns; returns the row."""
    B, H = sizes["B"], sizes["H"]
    flops = probe_flops(T, B, H)
    repeats = min(args.repeats, 3) if T >= FEWER_REPEATS_FROM_T else args.repeats
    params, x, y = make_inputs(jax.random.key(SEED), B=B, H=H, T=T)
    row = {"T": T, "flops": flops, "repeats": repeats}
    print(f"T={T}: rnnjax...", end="", flush=True)
    prepared = {"rnnjax": prepare_jax(rnnjax_probe(unroll=unroll), (params, x, y))}
    if torch is None:
        row["pytorch_eager"] = {"skipped": "--skip-torch" if args.skip_torch
                                else "torch not installed"}
    else:
        print(" PyTorch eager...", end="", flush=True)
        prepared["pytorch_eager"] = prepare_torch(torch, params, x, y)
    if args.skip_loop:
        row["jax_loop"] = {"skipped": "--skip-loop"}
    elif T > args.loop_max_t:
        row["jax_loop"] = {"skipped": "compile grows with T"}
    else:
        print(" JAX loop...", end="", flush=True)
        prepared["jax_loop"] = prepare_jax(loop_probe, (params, x, y))
    print(" timing...", end="", flush=True)
    runs = interleaved({k: v.call for k, v in prepared.items()}, repeats)
    ref = prepared["rnnjax"].grad_norm
    for impl, p in prepared.items():
        row[impl] = timed(p, runs[impl], flops)
    row["rnnjax"] |= {"unroll": unroll, "T_per_s": T / row["rnnjax"]["run_s_median"]}
    for impl in prepared.keys() - {"rnnjax"}:
        row[impl]["ratio_to_rnnjax"] = row[impl]["run_s_median"] / row["rnnjax"]["run_s_median"]
        row[impl]["max_rel_diff"] = max_rel_diff(prepared[impl].grad_norm, ref)
    print(" done", flush=True)
    return row


def bench_unrolls(Ts, unrolls, sizes, repeats):
    """rnnjax at each unroll and T: compile and run times (the unrolls' calls in turns)."""
    B, H = sizes["B"], sizes["H"]
    out = []
    for T in Ts:
        print(f"unroll at T={T}: compiling {unrolls}...", end="", flush=True)
        params, x, y = make_inputs(jax.random.key(SEED), B=B, H=H, T=T)
        prepared = {u: prepare_jax(rnnjax_probe(unroll=u), (params, x, y)) for u in unrolls}
        n = min(repeats, 3) if T >= FEWER_REPEATS_FROM_T else repeats
        runs = interleaved({u: p.call for u, p in prepared.items()}, n)
        ref = prepared[unrolls[0]].grad_norm
        for u, p in prepared.items():
            out.append({"T": T, "unroll": u, **timed(p, runs[u], probe_flops(T, B, H)),
                        "max_rel_diff": max_rel_diff(p.grad_norm, ref)})
        print(" done", flush=True)
    return out


def sweep_throughput(S, T, sizes, repeats, unroll):
    """rnnjax with S networks vmapped into one call at T: network-timesteps per second."""
    args = stacked_inputs(S, sizes["B"], sizes["H"], T)
    p = prepare_jax(jax.vmap(rnnjax_probe(unroll=unroll)), args)
    fields = timed(p, time_calls(p.call, repeats), S * probe_flops(T, sizes["B"], sizes["H"]))
    return {"seeds": S, "T": T, "unroll": unroll, **fields,
            "network_steps_per_s": S * T / fields["run_s_median"]}


# ---------------------------------------------------------------- report

def f2(v):
    return f"{v:.2f}"


def ms(r):
    return f"{1e3 * r['run_s_median']:.1f}"


def main_table(rows):
    """One row per T: rnnjax, PyTorch eager and the JAX loop side by side."""
    head = ["T", "rnnjax compile s", "rnnjax ms", "rnnjax GFLOP/s (% matmul)",
            "PyTorch eager ms", "PyTorch / rnnjax", "JAX loop compile s", "JAX loop ms",
            "JAX loop / rnnjax", "max rel diff"]
    body = []
    for row in rows:
        r, t, lp = row["rnnjax"], row["pytorch_eager"], row["jax_loop"]
        diffs = [row[i]["max_rel_diff"] for i in ("pytorch_eager", "jax_loop")
                 if "max_rel_diff" in row[i]]
        body.append([
            row["T"], f2(r["compile_s"]), ms(r),
            f"{r['gflops']:.1f} ({100 * r['fraction_of_matmul_rate']:.0f}%)",
            ms(t) if "run_s" in t else t["skipped"],
            f"**{t['ratio_to_rnnjax']:.2f}x**" if "run_s" in t else "",
            f2(lp["compile_s"]) if "run_s" in lp else lp["skipped"],
            ms(lp) if "run_s" in lp else "",
            f"{lp['ratio_to_rnnjax']:.2f}x" if "run_s" in lp else "",
            f"{max(diffs):.1e}" if diffs else ""])
    return markdown_table(head, body, [False] + [True] * 9)


def unroll_table(unrolls):
    """One row per T: rnnjax's run ms (compile s) at each unroll; and the compile growth."""
    us = sorted({u["unroll"] for u in unrolls})
    Ts = sorted({u["T"] for u in unrolls})
    at = {(u["T"], u["unroll"]): u for u in unrolls}
    body = [[T] + [f"{ms(at[T, u])} ({f2(at[T, u]['compile_s'])} s)" for u in us] for T in Ts]
    body.append([f"compile T={Ts[-1]} / T={Ts[0]}"]
                + [f"{at[Ts[-1], u]['compile_s'] / at[Ts[0], u]['compile_s']:.2f}x" for u in us])
    return markdown_table(["T"] + [f"unroll {u}: ms (compile)" for u in us], body,
                          [False] + [True] * len(us))


def memory_table(memory):
    """One row per T: measured peak and XLA's estimate, as multiples of the trajectory."""
    Ts = sorted({m["T"] for m in memory})
    at = {(m["T"], m["loss_at"]): m for m in memory}
    body = []
    for T in Ts:
        cells = [T, size(at[T, LOSS_AT[0]]["trajectory_bytes"])]
        for loss_at in LOSS_AT:
            m = at[T, loss_at]
            cells += [f"{size(m['measured']['increase_bytes'])} = "
                      f"**{m['measured_multiple']:.2f}x**", f"{m['xla_estimate_multiple']:.2f}x"]
        body.append(cells)
    head = ["T", "trajectory"] + [h for a in LOSS_AT for h in (
        f"loss_at={a}: measured peak", f"loss_at={a}: XLA estimate")]
    return markdown_table(head, body, [False] + [True] * 5)


def print_report(rows, unrolls, memory, sweep, matmul, machine, args, B, H, unroll):
    start, end = matmul["start"]["jax_gflops"], matmul["end"]["jax_gflops"]
    where = (f"{machine['device_kind']} (jax {machine['jax']}, {machine['jax_platform']})"
             if machine["jax_platform"] != "cpu" else
             f"{machine['cpu']}, {machine['cpu_count']} CPUs (jax {machine['jax']})")
    torch = f", torch {machine['torch']} on {machine['torch_device']}" if machine["torch"] else ""
    print(f"\n## rnnjax probe on {where}{torch}")
    print(f"B={B}, H={H}, vocabulary {VOCAB}, tanh, loss over all steps, normal({STD}) init; "
          f"rnnjax unroll {unroll}; FLOPs = 6*T*B*H*(H+Q); matmul rate "
          f"{matmul['reference_gflops']:.1f} GFLOP/s (the faster of {start:.1f} at the start and "
          f"{end:.1f} at the end); median of {args.repeats} calls taken in turns (at most 3 from "
          f"T={FEWER_REPEATS_FROM_T}); peer / rnnjax > 1: rnnjax is faster. The FLOPs include "
          "the weight gradients, which PyTorch's backward computes and the JAX probes do not; "
          "compile s = trace + lower + compile.")
    if not matmul["stable"]:
        print("WARNING: the matmul rate changed by more than 20% during the run: other work on "
              "this machine; the timings are unreliable")
    print()
    print(main_table(rows))
    print("\nrnnjax by probe.unroll:\n")
    print(unroll_table(unrolls))
    print(f"\nmemory: rnnjax, {args.mem_seeds} networks vmapped, a fresh process per row "
          f"({memory[0]['measured']['method']}); multiples of the trajectory S*T*B*H*4 bytes:\n")
    print(memory_table(memory))
    cuda = [(r["T"], r["pytorch_eager"]["cuda_max_memory_allocated_bytes"]) for r in rows
            if "cuda_max_memory_allocated_bytes" in r["pytorch_eager"]]
    if cuda:
        print("\nPyTorch eager, one network, torch.cuda.max_memory_allocated (multiple of "
              "T*B*H*4): " + ", ".join(f"T={T}: {size(b)} ({b / (T * B * H * 4):.1f}x)"
                                       for T, b in cuda))
    single = next((r for r in rows if r["T"] == args.sweep_t), None)
    line = (f"\nsweep (rnnjax): {sweep['seeds']} networks x T={sweep['T']} in one call, median "
            f"{sweep['run_s_median']:.3f} s = {sweep['network_steps_per_s']:,.0f} "
            f"network-timesteps/s ({sweep['gflops']:.1f} GFLOP/s)")
    if single is not None:
        line += f"; one network at a time: rnnjax {single['rnnjax']['T_per_s']:,.0f}/s"
        if "run_s_median" in single["pytorch_eager"]:
            torch_s = single["pytorch_eager"]["run_s_median"]
            line += f", PyTorch eager {args.sweep_t / torch_s:,.0f}/s"
    print(line)


# ---------------------------------------------------------------- main

def replaces_full_run(out: Path, quick: bool) -> str | None:
    """Why a --quick run's results cannot go to `out` (None: they can): it holds a full run's
    results (the committed reference), which smoke-test numbers must not replace."""
    if quick and out.is_file():
        try:
            full = json.loads(out.read_text()).get("config", {}).get("quick") is False
        except (OSError, ValueError, AttributeError):  # not a benchmark's JSON: replaced
            full = False
        if full:
            return (f"--out {out} holds a full run's results: a --quick run does not replace "
                    "them (name another file, or leave --out out)")
    return None


def make_parser() -> argparse.ArgumentParser:
    """The command line's parser; every help line states its default once."""
    parser = argparse.ArgumentParser(
        description="Times the per-timestep gradient-norm probe: rnnjax (lax.scan) against "
        "PyTorch eager (retain_grad on every step) and a d2l-style JAX Python loop under jit, "
        "on the same network and batch; reports compile and run times, GFLOP/s, agreement, "
        "rnnjax by unroll, its measured memory and sweep throughput, and writes them as JSON. "
        "On a GPU the same command measures the card.")
    fmt = " ".join  # a list default as the command line takes it
    parser.add_argument("--T", type=int, nargs="+", default=None,
                        help=f"sequence lengths (default: {fmt(map(str, FULL['T']))}; --quick: "
                        f"{fmt(map(str, QUICK['T']))})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed calls per implementation and T, at most 3 from "
                        f"T={FEWER_REPEATS_FROM_T} (default: {FULL['repeats']}; --quick: "
                        f"{QUICK['repeats']})")
    parser.add_argument("--unrolls", type=int, nargs="+", default=None,
                        help=f"probe.unroll values to time (default: "
                        f"{fmt(map(str, FULL['unrolls']))}; --quick: "
                        f"{fmt(map(str, QUICK['unrolls']))})")
    parser.add_argument("--loop-max-t", type=int, default=1024,
                        help="longest T for the JAX loop, whose compile time grows with T "
                        "(default: %(default)s)")
    parser.add_argument("--mem-seeds", type=int, default=None,
                        help=f"networks vmapped in the memory measurement (default: "
                        f"{FULL['mem_seeds']}; --quick: {QUICK['mem_seeds']})")
    parser.add_argument("--sweep-seeds", type=int, default=None,
                        help=f"networks vmapped in the sweep throughput (default: "
                        f"{SWEEP_SEEDS['cpu']} on a CPU, {SWEEP_SEEDS['gpu']} on a GPU; --quick: "
                        f"{SWEEP_SEEDS['quick']})")
    parser.add_argument("--sweep-t", type=int, default=None,
                        help=f"T of the sweep throughput (default: {FULL['sweep_t']}; --quick: "
                        f"{QUICK['sweep_t']})")
    parser.add_argument("--skip-torch", action="store_true", help="no PyTorch column")
    parser.add_argument("--skip-loop", action="store_true", help="no JAX loop column")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny sizes for a smoke test: B={QUICK['B']}, H={QUICK['H']} "
                        f"(without it: B={FULL['B']}, H={FULL['H']})")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help=f"the JSON results file (default: a new file under {RUNS}/bench/, "
                        "git-ignored; `--out results/bench.json` replaces the repository's "
                        "reference, which a --quick run never does)")
    parser.add_argument("--mem-worker", type=int, metavar="T", help=argparse.SUPPRESS)
    parser.add_argument("--mem-loss-at", choices=LOSS_AT, default="all", help=argparse.SUPPRESS)
    return parser


def parse_args(argv=None):
    """The command line, validated (one line and exit code 2 for a bad value or --out).

    Args:
      argv: the arguments (default: sys.argv[1:]).
    Returns:
      The arguments, every size filled in from FULL or QUICK, and `out` set.
    """
    parser = make_parser()
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for name in ("repeats", "mem_seeds", "sweep_t", "unrolls"):
        if getattr(args, name) is None:
            setattr(args, name, sizes[name])
    args.T = sorted(set(args.T or sizes["T"]))
    args.unrolls = sorted(set(args.unrolls))
    for name in ("T", "repeats", "mem_seeds", "sweep_seeds", "sweep_t", "unrolls"):
        v = getattr(args, name)
        if v is not None and min(v if isinstance(v, list) else [v]) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.mem_worker is None:  # a memory worker writes no file
        args.out = output_file(parser, args.out, default_out("bench", "-quick" * args.quick),
                               lambda out: replaces_full_run(out, args.quick))
    return args


def main(argv=None):
    """The benchmark (see the module's docstring); a memory worker with --mem-worker."""
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    B, H = sizes["B"], sizes["H"]
    # Compile times are part of what is measured: never read them from the persistent cache
    # (set here, not on import, so that importing this module changes nothing).
    jax.config.update("jax_enable_compilation_cache", False)
    if args.mem_worker is not None:
        if os.environ.get("RNNJAX_BENCH_CACHE"):  # a GPU's memory run (`measure_memory`)
            jax.config.update("jax_enable_compilation_cache", True)
            jax.config.update("jax_compilation_cache_dir", os.environ["RNNJAX_BENCH_CACHE"])
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        print(json.dumps(mem_worker(args.mem_worker, args.mem_seeds, B, H, args.mem_loss_at)))
        return

    torch = None if args.skip_torch else import_torch()
    if torch is None and not args.skip_torch:
        print(TORCH_HINT + "; skipping it")
    machine = machine_info(torch)
    gpu = machine["jax_platform"] == "gpu"
    if args.sweep_seeds is None:
        args.sweep_seeds = SWEEP_SEEDS["quick" if args.quick else "gpu" if gpu else "cpu"]
    unroll = default_unroll()
    print(machine_line(machine), flush=True)
    matmul = matmul_rate(4096 if gpu and not args.quick else sizes["matmul_n"], 5, torch)
    n = matmul["n"]
    print(f"dense float32 matmul {n}x{n}: jax {matmul['jax_gflops']:.1f} GFLOP/s"
          + (f", torch {matmul['torch_gflops']:.1f} GFLOP/s" if torch else ""), flush=True)

    if not args.quick:
        # One compile and call of each implementation first, so that the first T does not pay
        # for the process's first-use costs.
        warm = make_inputs(jax.random.key(SEED), B=B, H=H, T=2)
        prepare_jax(rnnjax_probe(), warm)
        if not args.skip_loop:
            prepare_jax(loop_probe, warm)
        if torch is not None:
            prepare_torch(torch, *warm)

    loads = [load_average()[0]]
    rows = [bench_one_t(T, sizes, args, torch, unroll) for T in args.T]
    loads.append(load_average()[0])
    # --quick: the longest T only (each unroll is a compilation of its own)
    unrolls = bench_unrolls(args.T[-1:] if args.quick else args.T, args.unrolls, sizes,
                            args.repeats)
    loads.append(load_average()[0])
    print(f"memory: {args.mem_seeds} networks vmapped, a fresh process per T and loss_at...",
          flush=True)
    # --quick: the longest T only (each row is a process of its own: seconds each)
    memory = measure_memory(args.T[-1:] if args.quick else args.T, args.mem_seeds, args.quick,
                            gpu)
    for m in memory:
        m["trajectory_bytes"] = args.mem_seeds * m["T"] * B * H * 4
        m["xla_estimate_multiple"] = m["xla_estimate"]["total_bytes"] / m["trajectory_bytes"]
        m["measured_multiple"] = m["measured"]["increase_bytes"] / m["trajectory_bytes"]
    print(f"sweep: {args.sweep_seeds} networks vmapped at T={args.sweep_t}...", flush=True)
    sweep = sweep_throughput(args.sweep_seeds, args.sweep_t, sizes, min(args.repeats, 3), unroll)
    loads.append(load_average()[0])

    # The matmul rate again: a machine that slowed down or sped up meanwhile (other work on
    # it) makes every timing suspect. The faster of the two is the reference.
    matmul = {"start": matmul, "end": matmul_rate(matmul["n"], 5, torch)}
    rates = [matmul[k]["jax_gflops"] for k in ("start", "end")]
    peak = matmul["reference_gflops"] = max(rates)
    matmul["stable"] = min(rates) >= 0.8 * peak
    for r in [sweep, *unrolls] + [row[i] for row in rows for i in IMPLS]:
        if "gflops" in r:
            r["fraction_of_matmul_rate"] = r["gflops"] / peak
    unroll_T = sorted({r["T"] for r in unrolls})
    growth = {u: next(r for r in unrolls if r["T"] == unroll_T[-1] and r["unroll"] == u)
              ["compile_s"] / next(r for r in unrolls if r["T"] == unroll_T[0]
                                   and r["unroll"] == u)["compile_s"] for u in args.unrolls}

    print_report(rows, unrolls, memory, sweep, matmul, machine, args, B, H, unroll)
    warning = busy_warning(loads) if not gpu else None
    if warning:
        print(warning)

    write_json({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
                "git": git_state(), "load_average_1min_during": loads,
                "load_average_at_end": load_average(),
                "config": {"B": B, "H": H, "vocab": VOCAB, "activation": "tanh",
                           "loss_at": "all", "init": f"normal({STD})", "T": args.T,
                           "repeats": args.repeats, "loop_max_t": args.loop_max_t,
                           "unroll": unroll, "unrolls": args.unrolls,
                           "mem_seeds": args.mem_seeds, "quick": args.quick},
                "flops_formula": "6*T*B*H*(H+Q)", "matmul": matmul, "results": rows,
                "unrolls": unrolls, "compile_growth_by_unroll": growth, "memory": memory,
                "sweep": sweep}, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
