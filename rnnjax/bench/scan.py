"""The parallel scan in time against the sequential one: `rnnjax bench`'s scan section.

For every registered cell with a linear form (`Cell.linear`, found through the registry: the
LRU, minGRU, minLSTM and S6 today; `custom`, `flax` and `equinox` are adapters, not cells) and
each T of `--scan-T`, one network at the cell's default options and init (B = 32 random token
sequences over a 28-token vocabulary, H = 64, float32, the loss over all steps or at the last
one: `--scan-loss-at`) and one batch; two programs, each by both scans (`probe.scan`):

  probe   `jax.jit(make_probe(cell, loss_at, scan=...))` (rnnjax.core.probes): the per-timestep
          gradient norms, as a job runs them for one network (`probe.unroll` at its default).
  train   `jax.jit(jax.value_and_grad(LOSSES[scan]))` (rnnjax.core.train): one training step's
          loss and gradient (the optimizer's update excluded: it is the same for both scans).

Reported per cell, T and program: the compile time (trace + lower + compile), the median of the
timed calls (the four programs take turns, call by call, so that a change of the machine's load
touches them alike; `--repeats`, at most 3 from T = 4096, 2 from T = 16384 or a trajectory of
256 MiB), the ratio
sequential / parallel (> 1: the parallel scan is faster), XLA's memory estimate of each program
(`memory_analysis()`, a multiple of the state trajectory T * B * state * bytes; not a measured
peak) and the agreement of the two scans: the largest relative difference of the probe's
grad_norm over the steps where the sequential one is at least GRAD_FLOOR (below it float32's
products flush to 0 at slightly different steps: `rnnjax.core.scan`), and of the training
loss and of the whole gradient (||g_par - g_seq|| / ||g_seq||).

A (cell, T) whose state trajectory exceeds `--scan-max-mib` is skipped and recorded as such
(S6's state is 2 * 16 floats a unit, 32 times the minGRU's: its parallel probe holds about 8
trajectories).

`rnnjax bench` runs this section (`--skip-scan` leaves it out); `python -m rnnjax.bench.scan`
runs it alone (the same flags, `--quick`, `--out`) and writes its own JSON.
"""

import argparse
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.bench.common import (
    RUNS,
    busy_warning,
    default_out,
    git_state,
    interleaved,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    output_file,
    size,
    summary,
    write_json,
)
from rnnjax.bench.contenders import FEWER_REPEATS_FROM_T, LOSS_AT, SEED, VOCAB, compile_jax
from rnnjax.core.cells import CELLS, registry
from rnnjax.core.probes import make_probe
from rnnjax.core.scan import SCANS
from rnnjax.core.train import LOSSES

ADAPTERS = ("custom", "flax", "equinox")  # registered, but wrappers of a user's cell
PROGRAMS = ("probe", "train")
# cells: how many of the linear cells (None: all); --quick times the first cell's probe only
# (each program is a compilation of its own, a second or two even at tiny sizes)
FULL = {"B": 32, "H": 64, "T": [1024, 4096, 16384], "repeats": 5, "cells": None,
        "programs": PROGRAMS}
QUICK = {"B": 4, "H": 8, "T": [16], "repeats": 2, "cells": 1, "programs": ("probe",)}
# Timed calls: at most 3 from T = FEWER_REPEATS_FROM_T (the probe benchmark's), at most 2 from
# T = 16384 or a state trajectory of 256 MiB (S6's at T = 1024: 12 s a round on 2 CPU cores)
FEWEST_REPEATS_FROM = {"T": 16384, "trajectory_bytes": 256 * 2**20}
# --scan-max-mib's default by platform: a parallel probe holds about 5 to 8 trajectories (XLA's
# estimate), and a training step's about as many again
MAX_TRAJECTORY_MIB = {"cpu": 512, "gpu": 4096}
GRAD_FLOOR = 1e-30  # grad_norm compared where the sequential one is at least this


def linear_cells() -> list[str]:
    """The registered cells with a linear form at their default options, in registry order."""
    return [name for name in CELLS
            if name not in ADAPTERS and registry.build(name, {}).linear is not None]


def trajectory_bytes(cell, params, B: int, T: int) -> int:
    """Bytes of the T states of one batch (every leaf of the state, at its dtype)."""
    s0 = jax.eval_shape(lambda p: cell.initial_state(p, B), params)
    return T * sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(s0))


def scan_inputs(cell, B: int, H: int, T: int):
    """One network of `cell` (its own init, seed SEED) and B random token sequences of length T
    with next-token targets: (params, x (B, T), y (B, T))."""
    k_params, k_tokens = jax.random.split(jax.random.key(SEED))
    params = cell.init(k_params, VOCAB, H, VOCAB)
    tokens = jax.random.randint(k_tokens, (B, T + 1), 0, VOCAB, dtype=jnp.int32)
    return params, tokens[:, :-1], tokens[:, 1:]


def programs(cell, loss_at: str, which: tuple[str, ...] = PROGRAMS) -> dict[tuple, object]:
    """(program, scan) -> the function to jit: the probe and one training step's gradient."""
    out = {}
    for program in which:
        for scan in SCANS:
            out[program, scan] = (
                make_probe(cell, loss_at, scan=scan) if program == "probe" else
                jax.value_and_grad(functools.partial(LOSSES[scan], cell, "tokens", loss_at)))
    return out


def prepare(fn, args):
    """fn compiled for args and called once: (a blocking call, its fields, its output)."""
    compiled, lower_s, compile_s = compile_jax(fn, *args)
    ma = compiled.memory_analysis()
    xla = None if ma is None else (ma.temp_size_in_bytes + ma.argument_size_in_bytes
                                   + ma.output_size_in_bytes - ma.alias_size_in_bytes)
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    fields = {"compile_s": lower_s + compile_s, "first_call_s": time.perf_counter() - start,
              "xla_estimate_bytes": xla}
    return (lambda: jax.block_until_ready(compiled(*args))), fields, out


def probe_agreement(seq, par) -> dict:
    """The probes' grad_norm compared where the sequential one is at least GRAD_FLOOR."""
    a = 10.0 ** np.asarray(seq.log10_grad_norm, np.float64)
    b = 10.0 ** np.asarray(par.log10_grad_norm, np.float64)
    kept = a >= GRAD_FLOOR
    diff = np.abs(b - a)[kept] / a[kept]
    return {"max_rel_diff": float(diff.max()) if kept.any() else None,
            "steps_compared": int(kept.sum()), "steps": int(a.size)}


def train_agreement(seq, par) -> dict:
    """The training steps' loss and whole gradient, relative to the sequential one's."""
    (l_seq, g_seq), (l_par, g_par) = seq, par
    gap = optax.tree.norm(jax.tree.map(jnp.subtract, g_par, g_seq))
    return {"loss_rel_diff": float(abs(l_par - l_seq) / abs(l_seq)),
            "max_rel_diff": float(gap / optax.tree.norm(g_seq))}


def repeats_at(T: int, trajectory: int, repeats: int) -> int:
    """Timed calls at T for a state trajectory of `trajectory` bytes: `repeats`, at most 3 from
    FEWER_REPEATS_FROM_T, at most 2 from FEWEST_REPEATS_FROM's T or trajectory."""
    if T >= FEWEST_REPEATS_FROM["T"] or trajectory >= FEWEST_REPEATS_FROM["trajectory_bytes"]:
        return min(repeats, 2)
    return min(repeats, 3) if T >= FEWER_REPEATS_FROM_T else repeats


def bench_cell_t(name: str, T: int, sizes: dict, loss_at: str, repeats: int,
                 max_mib: float) -> dict:
    """Both scans of one cell at one T, each program of `sizes`, their calls in turns."""
    cell = registry.build(name, {})
    params, x, y = scan_inputs(cell, sizes["B"], sizes["H"], T)
    row = {"cell": name, "T": T, "trajectory_bytes": trajectory_bytes(cell, params, sizes["B"], T)}
    if row["trajectory_bytes"] > max_mib * 2**20:
        row["skipped"] = (f"trajectory {size(row['trajectory_bytes'])} > {max_mib:g} MiB "
                          "(--scan-max-mib)")
        print(f"scan: {name} T={T} skipped: {row['skipped']}", flush=True)
        return row
    print(f"scan: {name} T={T}: compiling...", end="", flush=True)
    prepared = {key: prepare(fn, (params, x, y))
                for key, fn in programs(cell, loss_at, sizes["programs"]).items()}
    row["repeats"] = n = repeats_at(T, row["trajectory_bytes"], repeats)
    print(" timing...", end="", flush=True)
    runs = interleaved({key: p[0] for key, p in prepared.items()}, n)
    for program in sizes["programs"]:
        part = {scan: prepared[program, scan][1] | summary(runs[program, scan]) for scan in SCANS}
        part["ratio_sequential_to_parallel"] = (part["sequential"]["run_s_median"]
                                                / part["parallel"]["run_s_median"])
        agree = probe_agreement if program == "probe" else train_agreement
        part |= agree(prepared[program, "sequential"][2], prepared[program, "parallel"][2])
        row[program] = part
    print(" sequential/parallel: " + ", ".join(
        f"{p} {row[p]['ratio_sequential_to_parallel']:.2f}x" for p in sizes["programs"]),
        flush=True)
    return row


def warm_up(name: str, loss_at: str) -> None:
    """One compile and call of `name`'s probe by each scan at a tiny size, so that the first
    row does not pay for the process's first uses of the scans."""
    cell = registry.build(name, {})
    for fn in programs(cell, loss_at, ("probe",)).values():
        prepare(fn, scan_inputs(cell, 2, 4, 4))


def bench_scans(Ts: list[int], loss_at: str, repeats: int, quick: bool,
                max_mib: float | None = None) -> dict:
    """The section's record: its configuration and one row per cell and T (see the module's
    docstring); `max_mib` None: MAX_TRAJECTORY_MIB on this platform."""
    start = time.perf_counter()
    sizes = QUICK if quick else FULL
    if max_mib is None:
        max_mib = MAX_TRAJECTORY_MIB["cpu" if jax.default_backend() == "cpu" else "gpu"]
    cells = linear_cells()[:sizes["cells"]]
    if not quick:
        warm_up(cells[0], loss_at)
    loads = [load_average()[0]]
    rows = [bench_cell_t(name, T, sizes, loss_at, repeats, max_mib) for T in Ts for name in cells]
    loads.append(load_average()[0])
    return {"config": {"B": sizes["B"], "H": sizes["H"], "vocab": VOCAB, "loss_at": loss_at,
                       "T": Ts, "cells": cells, "programs": list(sizes["programs"]),
                       "repeats": repeats, "max_trajectory_mib": max_mib,
                       "grad_floor": GRAD_FLOOR, "dtype": "float32", "quick": quick},
            "load_average_1min_during": loads, "wall_s": time.perf_counter() - start,
            "results": rows, "verdict": verdict(rows)}


# ---------------------------------------------------------------- the report

def verdict(rows: list[dict]) -> dict[str, dict[str, list[int]]]:
    """cell -> program -> the T where each scan ran faster ("parallel", "sequential")."""
    out = {}
    for r in rows:
        for program in PROGRAMS:
            if program in r:
                faster = "parallel" if r[program]["ratio_sequential_to_parallel"] > 1 else \
                    "sequential"
                out.setdefault(r["cell"], {}).setdefault(program, {"parallel": [],
                                                                   "sequential": []})
                out[r["cell"]][program][faster].append(r["T"])
    return out


def scan_table(rows: list[dict], program: str) -> str:
    """One row per T: each cell's sequential and parallel ms (compile s) and their ratio."""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    Ts = sorted({r["T"] for r in rows})
    at = {(r["cell"], r["T"]): r for r in rows}
    body = []
    for T in Ts:
        line, diffs = [T], []
        for name in cells:
            r = at[name, T]
            if program not in r:
                line += ["skipped", "", ""]
                continue
            p = r[program]
            line += [f"{1e3 * p[s]['run_s_median']:.1f} ({p[s]['compile_s']:.1f} s)"
                     for s in SCANS]
            ratio = p["ratio_sequential_to_parallel"]
            line.append(f"**{ratio:.2f}x**" if ratio > 1 else f"{ratio:.2f}x")
            if p["max_rel_diff"] is not None:
                diffs.append(p["max_rel_diff"])
        body.append(line + [f"{max(diffs):.1e}" if diffs else ""])
    head = ["T"] + [h for c in cells for h in (f"{c} sequential ms (compile)",
                                               f"{c} parallel ms (compile)", f"{c} seq/par")]
    return markdown_table(head + ["max rel diff"], body, [False] + [True] * (len(head)))


def memory_table(rows: list[dict]) -> str:
    """One row per T: XLA's estimate of each cell's probe by each scan (multiple of the
    trajectory)."""
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    Ts = sorted({r["T"] for r in rows})
    at = {(r["cell"], r["T"]): r for r in rows}
    body = []
    for T in Ts:
        line = [T]
        for name in cells:
            r = at[name, T]
            tb = r["trajectory_bytes"]
            if "probe" not in r or r["probe"]["sequential"]["xla_estimate_bytes"] is None:
                line.append(f"{size(tb)}; skipped" if "probe" not in r else size(tb))
                continue
            line.append(f"{size(tb)}; " + " / ".join(
                f"{r['probe'][s]['xla_estimate_bytes'] / tb:.1f}x" for s in SCANS))
        body.append(line)
    return markdown_table(["T"] + [f"{c}: trajectory; seq / par" for c in cells], body,
                          [False] + [True] * len(cells))


def verdict_lines(record: dict) -> list[str]:
    """Per cell and program, where each scan was faster (the medians' ratio), and what that
    says of probe.scan=null (parallel for every cell with a linear form)."""
    lines, slower = [], []
    for name, by_program in record["verdict"].items():
        parts = []
        for program, faster in by_program.items():
            said = [f"{s} at T = {', '.join(map(str, Ts))}" for s, Ts in faster.items() if Ts]
            parts.append(f"{program}: {'; '.join(said)}")
            slower += faster["sequential"]
        lines.append(f"- {name}: faster " + " | ".join(parts))
    points = sum(len(Ts) for by in record["verdict"].values() for f in by.values()
                 for Ts in f.values())
    lines.append("probe.scan=null (parallel for these cells) is the faster scan everywhere "
                 "measured" if not slower else
                 f"probe.scan=null (parallel for these cells) is SLOWER than sequential at "
                 f"{len(slower)} of the {points} measured points (above)")
    return lines


def scan_report(record: dict) -> str:
    """The section's tables and verdict, as `rnnjax bench` prints them."""
    if "skipped" in record:
        return f"\nparallel against sequential scans: skipped ({record['skipped']})"
    c, rows = record["config"], record["results"]
    few = FEWEST_REPEATS_FROM
    text = ["\n## Parallel against sequential scans (probe.scan)",
            f"B={c['B']}, H={c['H']}, vocabulary {c['vocab']}, {c['dtype']}, loss_at="
            f"{c['loss_at']}, each cell's default options and init, one network; median of "
            f"{c['repeats']} calls taken in turns (at most 3 from T={FEWER_REPEATS_FROM_T}, 2 "
            f"from T={few['T']} or a trajectory of {size(few['trajectory_bytes'])}); seq/par > "
            f"1: the parallel scan is faster; compile s = trace + lower + compile; skipped: a "
            f"state trajectory over {c['max_trajectory_mib']:g} MiB; max rel diff: grad_norm "
            f"where the sequential one is >= {c['grad_floor']:g} (probe), the whole gradient "
            "(train).", "\nprobe, ms (compile s):\n", scan_table(rows, "probe")]
    if "train" in c["programs"]:
        text += ["\none training step (value_and_grad of the loss), ms (compile s):\n",
                 scan_table(rows, "train")]
    text += ["\nthe probe's memory: the state trajectory; XLA's estimate of each scan's "
             "program as a multiple of it:\n", memory_table(rows),
             "\nfaster scan by the median:", *verdict_lines(record)]
    return "\n".join(text)


# ---------------------------------------------------------------- the command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The section's flags (`rnnjax bench` and this module's own command)."""
    parser.add_argument("--scan-T", type=int, nargs="+", default=None, metavar="T",
                        help=f"sequence lengths of the parallel-against-sequential scan section "
                        f"(default: {' '.join(map(str, FULL['T']))}; --quick: "
                        f"{' '.join(map(str, QUICK['T']))})")
    parser.add_argument("--scan-loss-at", choices=LOSS_AT, default="last",
                        help="the scan section's loss (default: %(default)s, probe.loss_at's)")
    parser.add_argument("--scan-max-mib", type=float, default=None, metavar="MIB",
                        help="the scan section skips a cell and T whose state trajectory "
                        f"exceeds this many MiB (default: {MAX_TRAJECTORY_MIB['cpu']} on a CPU, "
                        f"{MAX_TRAJECTORY_MIB['gpu']} on a GPU)")
    parser.add_argument("--skip-scan", action="store_true",
                        help="no parallel-against-sequential scan section")


def scan_ts(args) -> list[int]:
    """--scan-T, or the default for --quick or a full run, sorted."""
    return sorted(set(args.scan_T or (QUICK if args.quick else FULL)["T"]))


def main(argv=None):
    """This section alone (`python -m rnnjax.bench.scan`): its tables and a JSON file."""
    parser = argparse.ArgumentParser(
        description="Times the parallel scan in time (probe.scan=parallel) against the "
        "sequential one for every cell with a linear form: the probe and a training step's "
        "gradient, compile and run times, XLA's memory estimate and the agreement of the two.")
    add_arguments(parser)
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed calls (default: {FULL['repeats']}; --quick: "
                        f"{QUICK['repeats']})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help=f"the JSON results file (default: a new file under {RUNS}/bench/)")
    args = parser.parse_args(argv)
    if args.skip_scan:
        parser.error("--skip-scan leaves nothing to run here")
    if min(scan_ts(args)) < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error("--scan-T and --repeats must be >= 1")
    if args.scan_max_mib is not None and args.scan_max_mib <= 0:
        parser.error("--scan-max-mib must be > 0")
    args.out = output_file(parser, args.out, default_out("bench", "-scan" + "-quick" * args.quick))
    jax.config.update("jax_enable_compilation_cache", False)  # compile times are measured
    machine = machine_info()
    print(machine_line(machine), flush=True)
    repeats = args.repeats or (QUICK if args.quick else FULL)["repeats"]
    scan = bench_scans(scan_ts(args), args.scan_loss_at, repeats, args.quick, args.scan_max_mib)
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
              "git": git_state(), "load_average_at_end": load_average(), "scan": scan}
    print(scan_report(scan))
    warning = busy_warning(scan["load_average_1min_during"]) \
        if machine["jax_platform"] == "cpu" else None
    if warning:
        print(warning)
    write_json(record, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
