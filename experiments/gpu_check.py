"""Does a big job fit the device, and what does it use? `python experiments/gpu_check.py`.

Runs the job `seeds=1024 seq_len=1024 hidden_size=256 batch_size=32` (`--quick`: `seeds=3
seq_len=12 hidden_size=8 batch_size=4`, for a CPU) on the first device, with the memory
planner's default budget or `--max-memory-gb G`, and reports the device's name, the measured
peak memory (`memory_stats()["peak_bytes_in_use"]` on an accelerator; the process's peak
resident memory, VmHWM, on a CPU), the wall time and the chunks the planner chose (its log
lines). Then it runs the first 64 seeds (`--quick`: all 3) again as a job of their own, one
network at a time, and checks that their gradient norms equal the big job's. With
`--max-memory-gb G` it also checks that the peak stayed under G. Exit code 0 when every check
holds.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

# Before JAX starts: the peak means something only without preallocation.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from rnnjax.app.config import register_configs  # noqa: E402
from rnnjax.app.job import run_job  # noqa: E402
from rnnjax.app.memory import peak_resident_bytes  # noqa: E402
from rnnjax.app.validate import validate  # noqa: E402
from rnnjax.sweeps.app import CONF_DIR  # noqa: E402

# The loss over all steps: the setting the published peaks were measured with.
FULL = ["seeds=1024", "seq_len=1024", "hidden_size=256", "batch_size=32", "probe.loss_at=all"]
QUICK = ["seeds=3", "seq_len=12", "hidden_size=8", "batch_size=4", "probe.loss_at=all"]
RTOL = 1e-5  # different chunk shapes may pick different kernels: equal to float32 rounding


def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for a CPU")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="the job's max_memory_gb (default: the planner's default budget)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the two jobs write their files (default: a temporary directory)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    return p.parse_args(argv)


def peak_bytes(device) -> tuple[int, str]:
    """The measured peak memory of the device (or of this process, on a CPU) and how."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "memory_stats()['peak_bytes_in_use']"
    return peak_resident_bytes(), "the process's peak resident memory (VmHWM)"


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    budget = [] if args.max_memory_gb is None else [f"max_memory_gb={args.max_memory_gb}"]
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("rnnjax")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    register_configs()
    tmp = None
    if args.out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="rnnjax_gpu_check_")
    out = args.out_dir or Path(tmp.name)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            big = validate(compose("config", overrides=sizes + budget))
            n_small = 3 if args.quick else 64
            small = validate(compose("config", overrides=sizes + [f"seeds={n_small}",
                                                                  "max_memory_gb=1e-9"]))
        device = jax.devices()[0]
        summary = run_job(big, out / "big")
        peak, method = peak_bytes(device)
        plan = [ln for ln in lines if "chunk" in ln or "network alone" in ln]
        lines.clear()
        run_job(small, out / "small")
        a = pd.read_parquet(out / "big" / "grad_norms.parquet")
        b = pd.read_parquet(out / "small" / "grad_norms.parquet")
        a = a[a.seed < n_small].reset_index(drop=True)
        g_a, g_b = a.grad_norm.to_numpy(), b.grad_norm.to_numpy()
        equal = len(g_a) == len(g_b) and bool(np.allclose(g_a, g_b, rtol=RTOL, atol=0,
                                                          equal_nan=True))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        if tmp is not None:
            tmp.cleanup()
    limit = None if args.max_memory_gb is None else int(args.max_memory_gb * 2**30)
    report = {
        "device_kind": device.device_kind, "backend": jax.default_backend(),
        "job": " ".join(sizes + budget), "status": summary["status"],
        "wall_time_s": summary["wall_time_s"], "peak_bytes": peak, "peak_method": method,
        "max_memory_bytes": limit, "under_max_memory": None if limit is None else peak < limit,
        "plan": plan, "equal_to_smaller_chunks": equal,
        "compared": f"seeds 0..{n_small - 1}, one network at a time, rtol {RTOL}",
    }
    print(f"{report['device_kind']} ({report['backend']}): {report['job']}: status "
          f"{report['status']}, {report['wall_time_s']:.1f} s, peak {peak / 2**30:.2f} GiB "
          f"({method})" + ("" if limit is None else
                           f", {'under' if peak < limit else 'OVER'} max_memory_gb"))
    for ln in plan or ["all seeds in one call"]:
        print(f"  plan: {ln}")
    print(f"  results equal to smaller chunks ({report['compared']}): {equal}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = equal and summary["status"] in ("ok", "nonfinite") and report["under_max_memory"] in (
        None, True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
