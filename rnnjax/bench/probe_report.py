"""The probe benchmark's report: its tables and the text `rnnjax bench` prints, from the
record it writes as JSON."""

from rnnjax.bench.common import markdown_table, size
from rnnjax.bench.contenders import FEWER_REPEATS_FROM_T, LOSS_AT
from rnnjax.bench.scan import scan_report

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


def print_report(record):
    """Prints the report of a run from its JSON record (see `rnnjax.bench.probe.main`)."""
    config, machine, matmul = record["config"], record["machine"], record["matmul"]
    rows, memory, sweep = record["results"], record["memory"], record["sweep"]
    B, H, unroll = config["B"], config["H"], config["unroll"]
    start, end = matmul["start"]["jax_gflops"], matmul["end"]["jax_gflops"]
    where = (f"{machine['device_kind']} (jax {machine['jax']}, {machine['jax_platform']})"
             if machine["jax_platform"] != "cpu" else
             f"{machine['cpu']}, {machine['cpu_count']} CPUs (jax {machine['jax']})")
    torch = f", torch {machine['torch']} on {machine['torch_device']}" if machine["torch"] else ""
    print(f"\n## rnnjax probe on {where}{torch}")
    print(f"B={B}, H={H}, vocabulary {config['vocab']}, tanh, loss over all steps, "
          f"{config['init']} init; "
          f"rnnjax unroll {unroll}; FLOPs = 6*T*B*H*(H+Q); matmul rate "
          f"{matmul['reference_gflops']:.1f} GFLOP/s (the faster of {start:.1f} at the start and "
          f"{end:.1f} at the end); median of {config['repeats']} calls taken in turns (at most "
          f"3 from T={FEWER_REPEATS_FROM_T}); peer / rnnjax > 1: rnnjax is faster. The FLOPs "
          "include the weight gradients, which PyTorch's backward computes and the JAX probes do "
          "not; compile s = trace + lower + compile.")
    if not matmul["stable"]:
        print("WARNING: the matmul rate changed by more than 20% during the run: other work on "
              "this machine; the timings are unreliable")
    print()
    print(main_table(rows))
    print("\nrnnjax by probe.unroll:\n")
    print(unroll_table(record["unrolls"]))
    print(f"\nmemory: rnnjax, {config['mem_seeds']} networks vmapped, a fresh process per row "
          f"({memory[0]['measured']['method']}); multiples of the trajectory S*T*B*H*4 bytes:\n")
    print(memory_table(memory))
    cuda = [(r["T"], r["pytorch_eager"]["cuda_max_memory_allocated_bytes"]) for r in rows
            if "cuda_max_memory_allocated_bytes" in r["pytorch_eager"]]
    if cuda:
        print("\nPyTorch eager, one network, torch.cuda.max_memory_allocated (multiple of "
              "T*B*H*4): " + ", ".join(f"T={T}: {size(b)} ({b / (T * B * H * 4):.1f}x)"
                                       for T, b in cuda))
    single = next((r for r in rows if r["T"] == sweep["T"]), None)
    line = (f"\nsweep (rnnjax): {sweep['seeds']} networks x T={sweep['T']} in one call, median "
            f"{sweep['run_s_median']:.3f} s = {sweep['network_steps_per_s']:,.0f} "
            f"network-timesteps/s ({sweep['gflops']:.1f} GFLOP/s)")
    if single is not None:
        line += f"; one network at a time: rnnjax {single['rnnjax']['T_per_s']:,.0f}/s"
        if "run_s_median" in single["pytorch_eager"]:
            torch_s = single["pytorch_eager"]["run_s_median"]
            line += f", PyTorch eager {sweep['T'] / torch_s:,.0f}/s"
    print(line)
    if "scan" in record:  # the parallel-against-sequential scan section (rnnjax.bench.scan)
        print(scan_report(record["scan"]))
