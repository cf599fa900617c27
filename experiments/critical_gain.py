"""The critical gain of vanilla RNNs, found by Optuna: `python experiments/critical_gain.py`.

For tanh, ReLU and sigmoid RNNs with W_hh ~ N(0, g²/H) (`init=gaussian init.gain=g`), rnnjax's
Optuna sweeper (`hydra/sweeper=rnnjax_optuna`) searches the gain g whose measured slope, the
log10 change of ||dL/dH_t|| per step back (summary.json's
headline.log10_slope_per_step_back, median over seeds), is 0: the edge between vanishing and
exploding gradients. Its objective is |slope| (the sweeper's default objective), minimized by
TPE (seeded, so the same command resumes and skips every finished trial).

Each search is one command (printed, and run in a subprocess):

    rnnjax run -m hydra/sweeper=rnnjax_optuna hydra.sweeper.n_trials=20 activation=tanh \\
        'init.gain=interval(0.5,2.0)' init=gaussian seq_len=128 hidden_size=128 seeds=4 \\
        batch_size=16 probe.loss_at=last

Then it prints a markdown table, one row per activation: Optuna's best gain g*, the slope
measured there, the gain where the slope crosses 0 between the two trials that bracket it
(linear in the slope), mean field's critical gain (chi_1(g) = 1, `rnnjax.core.meanfield`, with
the input variance the jobs measured) and g* minus it. Mean field takes the effective gain
sqrt(H mean W_hh²), within a few percent of g at H = 128.

Options: --trials N (20), --activations tanh,relu,sigmoid.
"""

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import brentq

from rnnjax.core.meanfield import mean_field
from rnnjax.sweeps.app import SWEEP_ROOT, sweep_name

# Where each activation's gain is searched: around its crossing, and below the gains where a
# ReLU network's state overflows within T = 128 steps (its slope is not finite there).
RANGES = {"tanh": (0.5, 2.0), "relu": (0.8, 2.0), "sigmoid": (4.0, 16.0)}
COMMON = ["init=gaussian", "seq_len=128", "hidden_size=128", "seeds=4", "batch_size=16",
          "probe.loss_at=last"]
SLOPE = "log10_slope_per_step_back"


def command(activation: str, trials: int) -> list[str]:
    low, high = RANGES[activation]
    return ["-m", "hydra/sweeper=rnnjax_optuna", f"hydra.sweeper.n_trials={trials}",
            f"activation={activation}", f"init.gain=interval({low},{high})", *COMMON]


def search(args: list[str]) -> Path:
    """Runs one search (its closing lines on stderr) and returns its sweep directory."""
    print("rnnjax run " + shlex.join(args), file=sys.stderr, flush=True)
    p = subprocess.run([sys.executable, "-m", "rnnjax", "run", *args], capture_output=True,
                       text=True)
    closing = [ln for ln in p.stderr.splitlines() if ln.startswith("rnnjax: ")]
    print("\n".join(closing) if p.returncode == 0 else p.stdout + p.stderr, file=sys.stderr,
          flush=True)
    if p.returncode != 0:
        raise SystemExit(p.returncode)
    return Path(SWEEP_ROOT) / sweep_name([a for a in args if "=" in a])


def trials(sweep: Path) -> list[dict]:
    """Every trial's gain, slope and mean-field inputs (the finished jobs, in trial order)."""
    rows = []
    for job in json.loads((sweep / "sweep.json").read_text())["jobs"]:
        summary = json.loads((sweep / job["dir"] / "summary.json").read_text())
        if summary["status"] not in ("ok", "nonfinite"):
            continue
        head = summary["headline"]
        mf = head["theory"]["mean_field"]
        rows.append({"gain": summary["config"]["init"]["gain"], "slope": head[SLOPE],
                     "effective_gain": mf["gain"], "input_var": mf["input_var"],
                     "bias_var": mf["bias_var"]})
    return [r for r in rows if r["slope"] is not None and math.isfinite(r["slope"])]


def crossing(rows: list[dict]) -> float | None:
    """The gain where the slope crosses 0, linear between the two nearest trials around it."""
    rows = sorted(rows, key=lambda r: r["gain"])
    below = [r for r in rows if r["slope"] < 0]
    above = [r for r in rows if r["slope"] >= 0]
    if not below or not above:
        return None
    a, b = below[-1], min(above, key=lambda r: r["gain"])
    if a["gain"] > b["gain"]:
        return None  # not monotone here: no single crossing
    return a["gain"] + (0 - a["slope"]) * (b["gain"] - a["gain"]) / (b["slope"] - a["slope"])


def critical_gain(activation: str, input_var: float, bias_var: float, high: float
                  ) -> float | None:
    """Mean field's first gain in (0.05, 2 high) with chi_1 = 1, or None."""
    def log_chi(g: float) -> float:
        return math.log(mean_field(activation, g, input_var, bias_var)["chi1"])

    grid = np.linspace(0.05, 2 * high, 400)
    values = np.array([log_chi(g) for g in grid])
    cross = np.nonzero(np.sign(values[1:]) != np.sign(values[:-1]))[0]
    if not cross.size:
        return None
    i = cross[0]
    return float(brentq(log_chi, grid[i], grid[i + 1], xtol=1e-10))


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| activation | Optuna's g* | measured slope at g* (log10/step) | slope crosses 0 "
             "at (between trials) | mean field's critical gain | g* − mean field |",
             "| --- | --- | --- | --- | --- | --- |"]
    for activation, rows in results.items():
        best = min(rows, key=lambda r: abs(r["slope"]))
        cross = crossing(rows)
        gc = critical_gain(activation, float(np.median([r["input_var"] for r in rows])),
                           float(np.median([r["bias_var"] for r in rows])),
                           RANGES[activation][1])
        g = best["gain"]
        lines.append(
            f"| {activation} | {g:.3f} | {best['slope']:+.4f} | "
            f"{'none' if cross is None else f'{cross:.3f}'} | "
            f"{'none' if gc is None else f'{gc:.3f}'} | "
            f"{'—' if gc is None else f'{g - gc:+.3f}'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per search (20)")
    parser.add_argument("--activations", default="tanh,relu,sigmoid",
                        help="comma-separated, of: " + ", ".join(RANGES))
    args = parser.parse_args()
    activations = args.activations.split(",")
    unknown = [a for a in activations if a not in RANGES]
    if unknown:
        parser.error(f"--activations={unknown[0]} is invalid; allowed: {', '.join(RANGES)}")
    results = {a: trials(search(command(a, args.trials))) for a in activations}
    print(table(results))


if __name__ == "__main__":
    main()
