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
  scan        probe.scan: the parallel scan in time against the sequential one, probe and
              training step, for every cell with a linear form at `--scan-T` (B = 32, H = 64;
              `rnnjax.bench.scan`, which also runs alone: python -m rnnjax.bench.scan).

On a GPU the same command runs JAX and PyTorch on the card (sweep default 256 networks); the
tables name the card.

Usage: rnnjax bench [--T 16 256 1024 4096] [--repeats 5] [--unrolls 1 2 4 8 16]
           [--loop-max-t 1024] [--mem-seeds 8] [--sweep-seeds N] [--sweep-t 1024]
           [--skip-torch] [--skip-loop] [--scan-T 1024 4096 16384] [--scan-loss-at last]
           [--scan-max-mib MIB] [--skip-scan] [--quick] [--out FILE]
       (or python experiments/bench.py ...)

The JSON goes to a new file under results/runs/bench/ (git-ignored) unless --out names one:
`rnnjax bench --out results/bench.json` is the one command that replaces the repository's
reference; a --quick run refuses to replace a full run's results.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before JAX starts: GPU memory statistics mean something only without preallocation.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

from rnnjax.app.memory import status_bytes  # noqa: E402
from rnnjax.bench.common import (  # noqa: E402
    RUNS,
    TORCH_HINT,
    busy_warning,
    default_out,
    git_state,
    import_torch,
    interleaved,
    load_average,
    machine_info,
    machine_line,
    output_file,
    reset_peak_rss,
    time_calls,
    write_json,
)
from rnnjax.bench.contenders import (  # noqa: E402
    FEWER_REPEATS_FROM_T,
    LOSS_AT,
    SEED,
    STD,
    VOCAB,
    loop_probe,
    make_inputs,
    matmul_rate,
    max_rel_diff,
    prepare_jax,
    prepare_torch,
    rnnjax_probe,
    stacked_inputs,
    timed,
)
from rnnjax.bench.probe_report import print_report  # noqa: E402
from rnnjax.bench.scan import add_arguments as add_scan_arguments  # noqa: E402
from rnnjax.bench.scan import bench_scans, scan_ts  # noqa: E402
from rnnjax.core.probes import default_unroll  # noqa: E402

FULL = {"B": 32, "H": 256, "T": [16, 256, 1024, 4096], "matmul_n": 2048, "repeats": 5,
        "mem_seeds": 8, "sweep_t": 1024, "unrolls": [1, 2, 4, 8, 16]}
QUICK = {"B": 4, "H": 16, "T": [4, 16], "matmul_n": 256, "repeats": 2, "mem_seeds": 2,
         "sweep_t": 16, "unrolls": [1, 2]}
SWEEP_SEEDS = {"cpu": 16, "gpu": 256, "quick": 2}  # default --sweep-seeds by platform
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


def _defaults(name: str) -> str:
    """`(default: X; --quick: Y)` for the size `name`, a list as the command line takes it."""
    def text(v):
        return " ".join(map(str, v)) if isinstance(v, list) else str(v)

    return f"(default: {text(FULL[name])}; --quick: {text(QUICK[name])})"


def make_parser() -> argparse.ArgumentParser:
    """The command line's parser; every help line states its default once."""
    parser = argparse.ArgumentParser(
        description="Times the per-timestep gradient-norm probe: rnnjax (lax.scan) against "
        "PyTorch eager (retain_grad on every step) and a d2l-style JAX Python loop under jit, "
        "on the same network and batch; reports compile and run times, GFLOP/s, agreement, "
        "rnnjax by unroll, its measured memory and sweep throughput, and writes them as JSON. "
        "On a GPU the same command measures the card.")
    parser.add_argument("--T", type=int, nargs="+", default=None,
                        help=f"sequence lengths {_defaults('T')}")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed calls per implementation and T, at most 3 from "
                        f"T={FEWER_REPEATS_FROM_T} {_defaults('repeats')}")
    parser.add_argument("--unrolls", type=int, nargs="+", default=None,
                        help=f"probe.unroll values to time {_defaults('unrolls')}")
    parser.add_argument("--loop-max-t", type=int, default=1024,
                        help="longest T for the JAX loop, whose compile time grows with T "
                        "(default: %(default)s)")
    parser.add_argument("--mem-seeds", type=int, default=None,
                        help=f"networks vmapped in the memory measurement {_defaults('mem_seeds')}")
    parser.add_argument("--sweep-seeds", type=int, default=None,
                        help=f"networks vmapped in the sweep throughput (default: "
                        f"{SWEEP_SEEDS['cpu']} on a CPU, {SWEEP_SEEDS['gpu']} on a GPU; --quick: "
                        f"{SWEEP_SEEDS['quick']})")
    parser.add_argument("--sweep-t", type=int, default=None,
                        help=f"T of the sweep throughput {_defaults('sweep_t')}")
    parser.add_argument("--skip-torch", action="store_true", help="no PyTorch column")
    parser.add_argument("--skip-loop", action="store_true", help="no JAX loop column")
    add_scan_arguments(parser)  # --scan-T, --scan-loss-at, --scan-max-mib, --skip-scan
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
    args.scan_T = scan_ts(args)
    for name in ("T", "repeats", "mem_seeds", "sweep_seeds", "sweep_t", "unrolls", "scan_T",
                 "scan_max_mib"):
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
    scan = ({"skipped": "--skip-scan"} if args.skip_scan else  # rnnjax.bench.scan
            bench_scans(args.scan_T, args.scan_loss_at, args.repeats, args.quick,
                        args.scan_max_mib))
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

    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
              "git": git_state(), "load_average_1min_during": loads,
              "load_average_at_end": load_average(),
              "config": {"B": B, "H": H, "vocab": VOCAB, "activation": "tanh",
                         "loss_at": "all", "init": f"normal({STD})", "T": args.T,
                         "repeats": args.repeats, "loop_max_t": args.loop_max_t,
                         "unroll": unroll, "unrolls": args.unrolls,
                         "mem_seeds": args.mem_seeds, "scan_T": args.scan_T,
                         "quick": args.quick},
              "flops_formula": "6*T*B*H*(H+Q)", "matmul": matmul, "results": rows,
              "unrolls": unrolls, "compile_growth_by_unroll": growth, "memory": memory,
              "sweep": sweep, "scan": scan}
    print_report(record)
    warning = busy_warning(loads) if not gpu else None
    if warning:
        print(warning)
    write_json(record, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
