"""Benchmark of the probe: per-timestep gradient norms ||dL/dH_t||_F, three ways.

One network (d2l's vanilla tanh RNN: B = 32 random token sequences over a 28-token vocabulary,
H = 256, every weight N(0, 0.01^2), biases zero, loss = mean softmax cross-entropy over all
steps) and one batch, for each T; three implementations compute grad_norm (T,) side by side:

  rnnjax            `jax.jit(make_probe(vanilla("tanh"), "all"))` (rnnjax.probes), BPTT
                    through lax.scan.
  PyTorch eager     what a PyTorch user writes: a Python loop over time, `H_t.retain_grad()` on
                    every step, `.backward()`, then the norms of every `H_t.grad`. The weights
                    are leaves that require grad (as in d2l), so their gradients are computed
                    too. All CPU threads; on CUDA when available.
  JAX Python loop   d2l's JAX RNN-from-scratch style: a Python `for` loop over the T steps inside
                    one jitted function (no scan), dL/dH_t from `jax.grad` with respect to
                    additive zero perturbations of H_t. Its program, and its compile time, grow
                    with T, so T above `--loop-max-t` is skipped.

Reported per implementation and T: compile time (JAX: trace + lower + compile, timed with
`.lower(...).compile()`; PyTorch: n.a.), the median run time of `--repeats` calls (each blocked
until ready), its ratio to rnnjax's median, achieved GFLOP/s (`probe_flops`) against this
machine's measured dense float32 matmul rate, and the largest relative difference of grad_norm
from rnnjax's (must be < 1e-3 in float32).

Also: rnnjax's compile-time growth (largest T over smallest), its memory with `--mem-seeds`
networks vmapped (XLA's `memory_analysis()` estimate, and the measured peak of a fresh
subprocess per T: `peak_bytes_in_use` on a GPU, the peak RSS increase on a CPU), each as a
multiple of the trajectory S*T*B*H*4 bytes, and the sweep throughput of `--sweep-seeds`
networks vmapped at T = `--sweep-t` (network-timesteps per second).

Usage: python experiments/bench.py [--T 16 256 1024 4096] [--repeats 5] [--loop-max-t 1024]
           [--mem-seeds 8] [--sweep-seeds 16] [--sweep-t 1024] [--skip-torch] [--skip-loop]
           [--quick] [--out results/bench.json]
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

# Before JAX starts: GPU memory statistics mean something only without preallocation.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from rnnjax.cells import RNNParams, vanilla  # noqa: E402
from rnnjax.cells.vanilla import init_params  # noqa: E402
from rnnjax.init import normal  # noqa: E402
from rnnjax.probes import make_probe  # noqa: E402
from rnnjax.results import write_json  # noqa: E402

# Compile times are part of what is measured: never read them from the persistent cache.
jax.config.update("jax_enable_compilation_cache", False)

PACKAGE = Path(__file__).resolve().parent
INSTALL_HINT = "PyTorch is not installed, skipping it: pip install -e '.[bench]'"
VOCAB, STD, SEED = 28, 0.01, 0
FULL = {"B": 32, "H": 256, "T": [16, 256, 1024, 4096], "matmul_n": 2048}
QUICK = {"B": 4, "H": 16, "T": [4, 16], "matmul_n": 256, "repeats": 2, "mem_seeds": 2,
         "sweep_seeds": 2, "sweep_t": 16}
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

def import_torch():
    """torch, or None when the bench extra is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


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

def time_calls(fn, repeats):
    """Wall seconds of `repeats` calls of fn (which blocks until its result is ready)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def compile_jax(fn, *args):
    """jax.jit(fn) compiled for args; returns (compiled, trace + lower s, compile s)."""
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lowered_at - start, time.perf_counter() - lowered_at


def timing(first_s, runs, flops):
    """The common fields of one implementation at one T."""
    median = statistics.median(runs)
    return {"first_call_s": first_s, "run_s": runs, "run_s_median": median,
            "gflops": flops / median / 1e9}


def time_jax(fn, args, repeats, flops):
    """Compile, one warm call, then `repeats` timed calls; returns (fields, grad_norm)."""
    compiled, lower_s, compile_s = compile_jax(fn, *args)
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    first_s = time.perf_counter() - start
    runs = time_calls(lambda: jax.block_until_ready(compiled(*args)), repeats)
    grad_norm = (10.0 ** np.asarray(out.log10_grad_norm, np.float64)
                 if hasattr(out, "log10_grad_norm") else out)
    fields = {"compile_s": lower_s + compile_s, "trace_lower_s": lower_s,
              "xla_compile_s": compile_s, **timing(first_s, runs, flops)}
    return fields, np.asarray(grad_norm, np.float64)


def time_torch(torch, params, x, y, repeats, flops):
    """One warm call, then `repeats` timed calls; returns (fields, grad_norm)."""
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
    first_s = time.perf_counter() - start
    runs = time_calls(call, repeats)
    fields = {"compile_s": None, **timing(first_s, runs, flops),
              "device": str(tx.device), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        fields["cuda_max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return fields, out.detach().cpu().double().numpy()


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

def rss_bytes(field):
    """VmRSS or VmHWM of this process, in bytes, from /proc/self/status (None if unreadable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Resets the kernel's peak-RSS mark (Linux: /proc/self/clear_refs); True when it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def mem_worker(T, S, B, H):
    """Runs in its own process: rnnjax's vmapped probe of S networks at T, once. Returns XLA's
    memory estimate and the measured peak during the call, in bytes."""
    args = jax.block_until_ready(stacked_inputs(S, B, H, T))
    compiled = jax.jit(jax.vmap(make_probe(vanilla("tanh"), "all"))).lower(*args).compile()
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
        # The peak mark cannot be reset: when compiling (autotuning) peaked higher, the
        # call's own peak is unknown and this is an upper bound (see peak_bytes_before_call).
        measured = {"method": "memory_stats peak_bytes_in_use - bytes_in_use before the call",
                    "peak_bytes_in_use": peak, "bytes_in_use_before": before["bytes_in_use"],
                    "peak_bytes_before_call": before["peak_bytes_in_use"],
                    "increase_bytes": peak - before["bytes_in_use"]}
    else:
        ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        # The peak RSS mark is reset after compiling, so the call's own peak is what is read.
        cleared = reset_peak_rss() and rss_bytes("VmHWM") is not None
        rss_before = rss_bytes("VmRSS")
        jax.block_until_ready(compiled(*args))
        ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if cleared:
            measured = {"method": "VmHWM after the call - VmRSS before (peak mark reset)",
                        "increase_bytes": rss_bytes("VmHWM") - rss_before}
        else:
            measured = {"method": "ru_maxrss after the call - before",
                        "increase_bytes": ru_after - ru_before}
        measured |= {"ru_maxrss_before_bytes": ru_before, "ru_maxrss_after_bytes": ru_after}
    return {"T": T, "seeds": S, "xla_estimate": estimate, "measured": measured}


def measure_memory(Ts, S, quick):
    """mem_worker for each T, each in a fresh interpreter (this file with --mem-worker), so that
    every peak is its own; they run at the same time, as only their memory is measured."""
    cmds = [[sys.executable, "-m", "rnnjax.bench", "--mem-worker", str(T),
             "--mem-seeds", str(S)] + ["--quick"] * quick for T in Ts]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for cmd in cmds]
    out = []
    for cmd, proc in zip(cmds, procs, strict=True):
        stdout, stderr = proc.communicate()
        if proc.returncode:
            print(stdout, stderr, sep="\n", file=sys.stderr)
            sys.exit(f"memory worker failed (exit code {proc.returncode}): {' '.join(cmd)}")
        out.append(json.loads(stdout.splitlines()[-1]))
    return out


# ---------------------------------------------------------------- report

def git_state():
    """The commit, and whether rnnjax/ differs from it (read-only git calls)."""
    def git(*a):
        p = subprocess.run(["git", "--no-optional-locks", *a], cwd=PACKAGE, capture_output=True,
                           text=True)
        return p.stdout.strip() if p.returncode == 0 else None

    status = git("status", "--porcelain", "--", ".")
    return {"commit": git("rev-parse", "HEAD"),
            "rnnjax_dirty": None if status is None else bool(status)}


def machine_info(torch):
    dev = jax.devices()[0]
    info = {"platform": dev.platform, "device_kind": dev.device_kind, "cpu_count": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "torch": torch.__version__ if torch else None,
            "torch_device": str(torch_device(torch)) if torch else None,
            "load_average_1min_at_start": os.getloadavg()[0]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


COLUMNS = {  # implementation: its table columns (header, formatter of its result dict)
    "rnnjax": [
        ("compile s", lambda r: f"{r['compile_s']:.2f}"),
        ("ms", lambda r: f"{1e3 * r['run_s_median']:.1f}"),
        ("GFLOP/s (% matmul)", lambda r: f"{r['gflops']:.1f} "
                                         f"({100 * r['fraction_of_matmul_rate']:.0f}%)")],
    "pytorch_eager": [
        ("ms", lambda r: f"{1e3 * r['run_s_median']:.1f}"),
        ("/ rnnjax", lambda r: f"{r['ratio_to_rnnjax']:.2f}"),
        ("GFLOP/s", lambda r: f"{r['gflops']:.1f} ({100 * r['fraction_of_matmul_rate']:.0f}%)"),
        ("max rel diff", lambda r: f"{r['max_rel_diff']:.1e}")],
}
COLUMNS["jax_loop"] = COLUMNS["rnnjax"][:1] + COLUMNS["pytorch_eager"]


def table(rows):
    """Markdown table: one row per T, a group of columns per implementation."""
    head = ["T"] + [f"{LABELS[i]} {h}" for i in IMPLS for h, _ in COLUMNS[i]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["T"])]
        for impl in IMPLS:
            r = row[impl]
            if "skipped" in r:
                cells += [f"skipped ({r['skipped']})"] + [""] * (len(COLUMNS[impl]) - 1)
            else:
                cells += [f(r) for _, f in COLUMNS[impl]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def size(n):
    """Bytes in the largest binary unit that keeps the number >= 1 (e.g. '1.50 GiB')."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Times the per-timestep gradient-norm probe: rnnjax (lax.scan) against "
        "PyTorch eager (retain_grad on every step) and a d2l-style JAX Python loop under jit, "
        "on the same network and batch; reports compile and run times, GFLOP/s, agreement, "
        "rnnjax's memory and sweep throughput, and writes them as JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--T", type=int, nargs="+", default=None,
                        help=f"sequence lengths (default {FULL['T']}; --quick: {QUICK['T']})")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per implementation and T (default 5, at most 3 from "
                        f"T={FEWER_REPEATS_FROM_T}; --quick: {QUICK['repeats']})")
    parser.add_argument("--loop-max-t", type=int, default=1024,
                        help="longest T for the JAX loop, whose compile time grows with T")
    parser.add_argument("--mem-seeds", type=int, default=None,
                        help=f"networks vmapped in the memory measurement (default 8; --quick: "
                        f"{QUICK['mem_seeds']})")
    parser.add_argument("--sweep-seeds", type=int, default=None,
                        help=f"networks vmapped in the sweep throughput (default 16; --quick: "
                        f"{QUICK['sweep_seeds']})")
    parser.add_argument("--sweep-t", type=int, default=None,
                        help=f"T of the sweep throughput (default 1024; --quick: "
                        f"{QUICK['sweep_t']})")
    parser.add_argument("--skip-torch", action="store_true", help="no PyTorch column")
    parser.add_argument("--skip-loop", action="store_true", help="no JAX loop column")
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny sizes for a smoke test (B={QUICK['B']}, H={QUICK['H']})")
    parser.add_argument("--out", type=Path, default=Path("results") / "bench.json",
                        help="the JSON results file")
    parser.add_argument("--mem-worker", type=int, metavar="T", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else {"repeats": 5, "mem_seeds": 8, "sweep_seeds": 16,
                                         "sweep_t": 1024}
    for name in ("repeats", "mem_seeds", "sweep_seeds", "sweep_t"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    args.T = sorted(set(args.T or (QUICK if args.quick else FULL)["T"]))
    for name in ("T", "repeats", "mem_seeds", "sweep_seeds", "sweep_t"):
        v = getattr(args, name)
        if min(v if isinstance(v, list) else [v]) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def bench_one_t(T, sizes, args, torch):
    """All implementations at one T; returns the row."""
    B, H = sizes["B"], sizes["H"]
    flops = probe_flops(T, B, H)
    repeats = min(args.repeats, 3) if T >= FEWER_REPEATS_FROM_T else args.repeats
    params, x, y = make_inputs(jax.random.key(SEED), B=B, H=H, T=T)
    row = {"T": T, "flops": flops, "repeats": repeats}
    print(f"T={T}: rnnjax...", end="", flush=True)
    row["rnnjax"], ref = time_jax(make_probe(vanilla("tanh"), "all"), (params, x, y), repeats,
                                  flops)
    row["rnnjax"]["T_per_s"] = T / row["rnnjax"]["run_s_median"]
    peers = {}
    if torch is None:
        why = "--skip-torch" if args.skip_torch else "torch not installed"
        row["pytorch_eager"] = {"skipped": why}
    else:
        print(" PyTorch eager...", end="", flush=True)
        row["pytorch_eager"], peers["pytorch_eager"] = time_torch(torch, params, x, y, repeats,
                                                                  flops)
    if args.skip_loop:
        row["jax_loop"] = {"skipped": "--skip-loop"}
    elif T > args.loop_max_t:
        row["jax_loop"] = {"skipped": "compile grows with T"}
    else:
        print(" JAX loop...", end="", flush=True)
        row["jax_loop"], peers["jax_loop"] = time_jax(loop_probe, (params, x, y), repeats, flops)
    for impl, grad_norm in peers.items():
        row[impl]["ratio_to_rnnjax"] = row[impl]["run_s_median"] / row["rnnjax"]["run_s_median"]
        row[impl]["max_rel_diff"] = max_rel_diff(grad_norm, ref)
    print(" done", flush=True)
    return row


def sweep_throughput(S, T, sizes, repeats):
    """rnnjax with S networks vmapped into one call at T: network-timesteps per second."""
    args = stacked_inputs(S, sizes["B"], sizes["H"], T)
    fields, _ = time_jax(jax.vmap(make_probe(vanilla("tanh"), "all")), args, repeats,
                         S * probe_flops(T, sizes["B"], sizes["H"]))
    return {"seeds": S, "T": T, **fields, "network_steps_per_s": S * T / fields["run_s_median"]}


def print_report(rows, growth, memory, sweep, matmul, args, B, H):
    """The markdown table, compile growth, memory and throughput lines."""
    start, end = matmul["start"]["jax_gflops"], matmul["end"]["jax_gflops"]
    print()
    print(f"B={B}, H={H}, vocabulary {VOCAB}, tanh, loss over all steps, normal({STD}) init; "
          f"FLOPs = 6*T*B*H*(H+Q); matmul rate {matmul['reference_gflops']:.1f} GFLOP/s (the "
          f"faster of {start:.1f} at the start and {end:.1f} at the end); median of "
          f"{args.repeats} calls (at most 3 from T={FEWER_REPEATS_FROM_T}); peer / rnnjax > 1: "
          "rnnjax is faster. The FLOPs include the weight gradients, which PyTorch's backward "
          "computes and the JAX probes do not; compile s = trace + lower + compile (the first "
          "call's extra time is in the JSON, first_call_s).")
    if not matmul["stable"]:
        print("WARNING: the matmul rate changed by more than 20% during the run: other work on "
              "this machine; the timings are unreliable")
    print()
    print(table(rows))
    print()
    print(f"compile time growth (rnnjax): T={growth['T_large']} / T={growth['T_small']} = "
          f"{growth['ratio']:.2f}x")
    print(f"memory (rnnjax, {args.mem_seeds} networks vmapped; multiples of the trajectory "
          "S*T*B*H*4 bytes):")
    for m in memory:
        e = m["xla_estimate"]
        print(f"  T={m['T']}: trajectory {size(m['trajectory_bytes'])}; XLA estimate temp "
              f"{size(e['temp_size_in_bytes'])} + argument {size(e['argument_size_in_bytes'])} "
              f"+ output {size(e['output_size_in_bytes'])} = {m['xla_estimate_multiple']:.2f}x; "
              f"measured peak increase {size(m['measured']['increase_bytes'])} = "
              f"{m['measured_multiple']:.2f}x")
    print(f"  (measured: {memory[0]['measured']['method']})")
    cuda = [(r["T"], r["pytorch_eager"]["cuda_max_memory_allocated_bytes"]) for r in rows
            if "cuda_max_memory_allocated_bytes" in r["pytorch_eager"]]
    if cuda:
        print("PyTorch eager, one network, torch.cuda.max_memory_allocated (multiple of T*B*H*4): "
              + ", ".join(f"T={T}: {size(b)} ({b / (T * B * H * 4):.1f}x)" for T, b in cuda))
    single = next((r for r in rows if r["T"] == args.sweep_t), None)
    line = (f"sweep throughput (rnnjax): {sweep['seeds']} networks x T={sweep['T']} in one call, "
            f"median {sweep['run_s_median']:.3f} s = {sweep['network_steps_per_s']:.0f} "
            f"network-timesteps/s ({sweep['gflops']:.1f} GFLOP/s)")
    if single is not None:
        line += f"; one network at a time: rnnjax {single['rnnjax']['T_per_s']:.0f}/s"
        if "run_s_median" in single["pytorch_eager"]:
            torch_s = single["pytorch_eager"]["run_s_median"]
            line += f", PyTorch eager {args.sweep_t / torch_s:.0f}/s"
    print(line)


def main(argv=None):
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    B, H = sizes["B"], sizes["H"]
    if args.mem_worker is not None:
        print(json.dumps(mem_worker(args.mem_worker, args.mem_seeds, B, H)))
        return

    torch = None if args.skip_torch else import_torch()
    if torch is None and not args.skip_torch:
        print(INSTALL_HINT)
    machine = machine_info(torch)
    print(f"machine: {machine.get('cpu', '?')}, {machine['cpu_count']} CPUs, jax "
          f"{machine['jax']} on {machine['platform']} ({machine['device_kind']}), torch "
          f"{machine['torch']} on {machine['torch_device']}, load average "
          f"{machine['load_average_1min_at_start']:.2f}", flush=True)
    matmul = matmul_rate(4096 if machine["platform"] == "gpu" and not args.quick
                         else sizes["matmul_n"], 5, torch)
    n = matmul["n"]
    print(f"dense float32 matmul {n}x{n}: jax {matmul['jax_gflops']:.1f} GFLOP/s"
          + (f", torch {matmul['torch_gflops']:.1f} GFLOP/s" if torch else ""), flush=True)

    if not args.quick:
        # One compile and call of each implementation first, so that the first T does not pay
        # for the process's first-use costs.
        warm = make_inputs(jax.random.key(SEED), B=B, H=H, T=2)
        time_jax(make_probe(vanilla("tanh"), "all"), warm, 1, 1)
        if not args.skip_loop:
            time_jax(loop_probe, warm, 1, 1)
        if torch is not None:
            time_torch(torch, *warm, 1, 1)

    rows = [bench_one_t(T, sizes, args, torch) for T in args.T]
    lo, hi = rows[0], rows[-1]
    growth = {"T_small": lo["T"], "T_large": hi["T"],
              "ratio": hi["rnnjax"]["compile_s"] / lo["rnnjax"]["compile_s"]}

    print(f"memory: {args.mem_seeds} networks vmapped, a fresh process per T...", flush=True)
    memory = measure_memory(args.T, args.mem_seeds, args.quick)
    for m in memory:
        m["trajectory_bytes"] = args.mem_seeds * m["T"] * B * H * 4
        m["xla_estimate_multiple"] = m["xla_estimate"]["total_bytes"] / m["trajectory_bytes"]
        m["measured_multiple"] = m["measured"]["increase_bytes"] / m["trajectory_bytes"]

    print(f"sweep: {args.sweep_seeds} networks vmapped at T={args.sweep_t}...", flush=True)
    sweep = sweep_throughput(args.sweep_seeds, args.sweep_t, sizes, min(args.repeats, 3))

    # The matmul rate again: a machine that slowed down or sped up meanwhile (other work on
    # it) makes every timing suspect. The faster of the two is the reference.
    matmul = {"start": matmul, "end": matmul_rate(matmul["n"], 5, torch)}
    rates = [matmul[k]["jax_gflops"] for k in ("start", "end")]
    peak = matmul["reference_gflops"] = max(rates)
    matmul["stable"] = min(rates) >= 0.8 * peak
    for r in [sweep] + [row[i] for row in rows for i in IMPLS]:
        if "gflops" in r:
            r["fraction_of_matmul_rate"] = r["gflops"] / peak

    print_report(rows, growth, memory, sweep, matmul, args, B, H)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
                "git": git_state(), "load_average_1min_at_end": os.getloadavg()[0],
                "config": {"B": B, "H": H, "vocab": VOCAB, "activation": "tanh",
                           "loss_at": "all", "init": f"normal({STD})", "T": args.T,
                           "repeats": args.repeats, "loop_max_t": args.loop_max_t,
                           "mem_seeds": args.mem_seeds, "quick": args.quick},
                "flops_formula": "6*T*B*H*(H+Q)", "matmul": matmul, "results": rows,
                "compile_growth": growth, "memory": memory, "sweep": sweep}, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
