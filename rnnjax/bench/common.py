"""What the benchmarks (`rnnjax.bench.probe`, `rnnjax.bench.train`) share: the machine's
description, timing with interleaved repeats, tables, memory readings and JSON.

Imports neither JAX nor PyTorch at module level, so that a PyTorch worker process does not pay
for importing JAX (`machine_info` imports JAX when it runs).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rnnjax.app.markdown import markdown_table  # noqa: F401 (the benchmarks' tables)

PACKAGE = Path(__file__).resolve().parent
RUNS = Path("results") / "runs"  # git-ignored: where a command's output goes unless told --out
TORCH_HINT = "PyTorch is not installed: pip install -e '.[bench]'"
# A 1-minute load average above this fraction of the cores means other work shared the machine:
# the report says so, as its timings are then not to be trusted.
BUSY_LOAD_FRACTION = 0.5


# ---------------------------------------------------------------- the machine

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews every timing)."""
    return [round(v, 2) for v in os.getloadavg()]


def import_torch():
    """torch, or None when the `bench` extra is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def machine_info(torch=None) -> dict[str, Any]:
    """The machine, the versions and the load at the start: every benchmark's JSON holds it.

    Args:
      torch: the torch module, or None when PyTorch is not part of the run.
    """
    import jax

    dev = jax.devices()[0]
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "jax_platform": dev.platform, "device_kind": dev.device_kind,
            "torch": torch.__version__ if torch else None,
            "torch_device": None, "load_average_at_start": load_average()}
    if torch is not None:
        cuda = torch.cuda.is_available()
        info["torch_device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    """One line naming the machine, the versions and the load."""
    accel = "" if info["jax_platform"] == "cpu" else f", {info['device_kind']}"
    torch = f", torch {info['torch']} ({info['torch_device']})" if info.get("torch") else ""
    load = " / ".join(f"{v:.2f}" for v in info["load_average_at_start"])
    return (f"machine: {info['cpu']}, {info['cpu_count']} CPUs{accel}; jax {info['jax']} "
            f"({info['jax_platform']}){torch}; load average (1/5/15 min) {load}")


def busy_warning(loads: Sequence[float], cpus: int | None = None) -> str | None:
    """A warning line when a 1-minute load average exceeds BUSY_LOAD_FRACTION of the cores."""
    cpus = cpus or os.cpu_count() or 1
    worst = max(loads)
    if worst <= BUSY_LOAD_FRACTION * cpus:
        return None
    return (f"WARNING: load average up to {worst:.2f} on {cpus} CPUs: other work shared the "
            "machine and the timings are unreliable; measure again when it is idle")


def git_state() -> dict[str, Any]:
    """The commit, and whether the checkout's tracked files differ from it
    (`rnnjax.app.provenance.git_state`: one read-only git call per process)."""
    from rnnjax.app.provenance import git_state as checkout_state

    commit, dirty = checkout_state()
    return {"commit": commit, "rnnjax_dirty": dirty}


# ---------------------------------------------------------------- timing

def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of fn (which blocks until its result is ready)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of `repeats` calls of each fn, taken in turns (a, b, c, a, b, c, ...), so
    that a change of the machine's load meanwhile touches every contender alike."""
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name] += time_calls(fn, 1)
    return out


def summary(runs: Sequence[float]) -> dict[str, Any]:
    """The median and the range of timed calls."""
    return {"run_s": list(runs), "run_s_median": statistics.median(runs),
            "run_s_min": min(runs), "run_s_max": max(runs)}


def run_timed(cmd: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Runs `cmd`; returns (completed process, wall seconds). Exits with an error, after
    printing the command's output, when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), env=None if env is None else dict(env), cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
        sys.exit(f"failed (exit code {proc.returncode}): {' '.join(cmd)}")
    return proc, wall


# ---------------------------------------------------------------- memory of this process

def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (Linux: /proc/self/clear_refs); True when it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- tables and files

def size(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (e.g. '1.50 GiB')."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def write_json(obj: Any, path: Path) -> None:
    """Writes `obj` to `path` as `rnnjax.app.results.write_json` does (strict JSON, atomically),
    creating its folder."""
    from rnnjax.app.results import write_json as write  # pandas: only where a benchmark writes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(obj, path)


def last_json_line(stdout: str) -> dict[str, Any]:
    """The JSON object a worker process printed as its last line."""
    return json.loads(stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- where a benchmark writes

def default_out(name: str, suffix: str = "") -> Path:
    """Where a benchmark writes its JSON unless told --out: a new file under RUNS/NAME/
    (git-ignored), named by the date and time (and `suffix`), never the repository's reference
    results/NAME.json, which only `--out results/NAME.json` replaces."""
    return RUNS / name / f"{time.strftime('%Y%m%d-%H%M%S')}{suffix}.json"


def output_file(parser: argparse.ArgumentParser, out: Path | None, default: Path,
                problem: Callable[[Path], str | None] | None = None) -> Path:
    """A benchmark's JSON file: --out, else `default` (see `default_out`), checked before any
    work starts. Where it cannot be written (`rnnjax.app.results.unwritable`), or `problem(out)`
    gives a further reason in words, the command ends with one line and exit code 2 (not
    argparse's two: the usage is not what is wrong)."""
    from rnnjax.app.results import unwritable  # pandas: loaded only where a benchmark runs

    out = out or default
    why = unwritable(out)
    why = f"--out {out}: {why}" if why else problem(out) if problem else None
    if why:
        parser.exit(2, f"{parser.prog}: error: {why}\n")
    return out
