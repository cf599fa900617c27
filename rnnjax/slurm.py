"""SLURM beside hydra-submitit-launcher: refuse a request no node can run, wait for an array.

A request beyond every node of its partition is rejected by sbatch in some cases (a GPU where
no node has one, more memory than any node) but in others it is accepted and then pends forever
(more CPUs than any node: `Reason=PartitionConfig`), while Hydra waits in silence.
`unsatisfiable` reads the partition's nodes with `sinfo` and compares them with the launcher's
keys before anything is submitted. `submitted_tasks` and `wait_for_tasks` find the tasks of a
submitted array and wait until SLURM has ended every one of them.
"""

import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

# One line per node of each partition: partition (default marked *), node, CPUs, memory (MB),
# GRES, time limit.
SINFO_FORMAT = "%P|%N|%c|%m|%G|%l"


class Node(NamedTuple):
    """What one node of a partition offers a job."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int


class Partition(NamedTuple):
    """A partition's nodes and its time limit (None: unlimited)."""

    name: str
    nodes: list[Node]
    max_minutes: float | None


class Request(NamedTuple):
    """What a job asks of each node, with the launcher settings that ask it."""

    nodes: int
    cpus: int
    mem_mb: float
    gpus: int
    minutes: float | None
    keys: dict[str, str]  # resource ("cpus", "mem", "gpus", "nodes", "time") -> "key=value, ..."


def is_slurm_launcher(launcher: Mapping) -> bool:
    """Whether a `hydra.launcher` config is hydra-submitit-launcher's SLURM launcher."""
    return str(launcher.get("_target_", "")).endswith("SlurmLauncher")


def _count_gpus(gres: str) -> int:
    """GPUs in a GRES string: `gpu:4`, `gpu:a100:2(S:0-1),gpu:v100:1`, `(null)` -> 0."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def _minutes(limit: str) -> float | None:
    """A SLURM time limit (`infinite`, `1-00:00:00`, `2:00:00`, `30:00`, `30`) in minutes."""
    limit = limit.strip()
    if limit.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    h, m, s = ([0.0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0.0, parts[0], 0.0)
    return (float(days) if days else 0.0) * 1440 + h * 60 + m + s / 60


def _mem_mb(value: Any) -> float:
    """A SLURM memory value (`4G`, `512M`, `2T`, a number of MB) in MB."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)B?\s*", str(value), re.IGNORECASE)
    if m is None:
        raise ValueError(f"not a memory size: {value!r}")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[m.group(2).upper()]
    return float(m.group(1)) * scale


def parse_sinfo(text: str, partition: str | None) -> Partition | str:
    """The partition (None: the cluster's default) from `sinfo -h -N -o SINFO_FORMAT` output.

    Returns:
        The Partition, or a one-line message when the cluster has no such partition.
    """
    nodes: dict[str, list[Node]] = {}
    limits: dict[str, float | None] = {}
    default = None
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, node, cpus, mem, gres, limit = fields
        if name.endswith("*"):
            name = default = name[:-1]
        nodes.setdefault(name, []).append(
            Node(node, int(cpus.rstrip("+")), int(mem.rstrip("+")), _count_gpus(gres)))
        limits[name] = _minutes(limit)
    want = partition if partition is not None else default
    if want not in nodes:
        known = ", ".join(sorted(nodes)) or "none"
        if partition is None:
            return f"hydra.launcher.partition=null: the cluster has no default partition " \
                   f"(partitions: {known})"
        return f"hydra.launcher.partition={partition}: no such partition (partitions: {known})"
    return Partition(want, nodes[want], limits[want])


def request(launcher: Mapping) -> Request:
    """What a submitit SLURM launcher config asks of each node (as submitit passes it to sbatch).

    `gres: gpu:N` and `gpus_per_task` count as GPUs beside `gpus_per_node`; `mem_per_cpu`
    counts per CPU; `additional_parameters` are not read.
    """
    get = launcher.get
    tasks = int(get("tasks_per_node") or 1)
    cpus = int(get("cpus_per_task") or 1) * tasks
    keys = {"cpus": f"cpus_per_task={get('cpus_per_task')}"
                    + (f" x tasks_per_node={tasks}" if tasks > 1 else "")}
    gpus, gpu_keys = 0, []
    if get("gpus_per_node"):
        gpus = int(get("gpus_per_node"))
        gpu_keys.append(f"gpus_per_node={gpus}")
    if get("gpus_per_task"):
        gpus = max(gpus, int(get("gpus_per_task")) * tasks)
        gpu_keys.append(f"gpus_per_task={get('gpus_per_task')}")
    if get("gres"):
        gpus = max(gpus, _count_gpus(str(get("gres"))))
        gpu_keys.append(f"gres={get('gres')}")
    keys["gpus"] = ", ".join(gpu_keys)
    mem_mb = 0.0
    if get("mem_gb") is not None:
        mem_mb = float(get("mem_gb")) * 1024  # submitit passes --mem=<N>GB; SLURM's G is GiB
        keys["mem"] = f"mem_gb={get('mem_gb')}"
    elif get("mem_per_cpu") is not None:
        mem_mb = _mem_mb(get("mem_per_cpu")) * cpus
        keys["mem"] = f"mem_per_cpu={get('mem_per_cpu')}"
    minutes = get("timeout_min")
    nodes = int(get("nodes") or 1)
    keys["time"] = f"timeout_min={minutes}"
    keys["nodes"] = f"nodes={nodes}"
    return Request(nodes, cpus, mem_mb, gpus, None if minutes is None else float(minutes), keys)


def check_request(req: Request, part: Partition) -> str | None:
    """Why the partition can never run the request, in one line; None when it can."""
    if req.minutes is not None and part.max_minutes is not None \
            and req.minutes > part.max_minutes:
        return (f"hydra.launcher.{req.keys['time']} is over partition {part.name}'s time limit "
                f"of {part.max_minutes:g} minutes")
    fits = [n for n in part.nodes
            if n.cpus >= req.cpus and n.mem_mb >= req.mem_mb and n.gpus >= req.gpus]
    if len(fits) >= req.nodes:
        return None
    most_cpus = max(n.cpus for n in part.nodes)
    most_mem = max(n.mem_mb for n in part.nodes)
    most_gpus = max(n.gpus for n in part.nodes)
    asked = [(req.keys["cpus"], req.cpus > most_cpus),
             (req.keys.get("mem", ""), req.mem_mb > most_mem),
             (req.keys["gpus"], req.gpus > most_gpus)]
    over = [k for k, exceeded in asked if exceeded]
    offer = (f"{len(part.nodes)} node{'s' * (len(part.nodes) != 1)} with at most {most_cpus} "
             f"CPUs, {most_gpus} GPUs and {most_mem / 1024:.1f} GB of memory each")
    if over:
        what = "more than any node offers"
    elif fits:
        over = [req.keys["nodes"]]
        what = (f"only {len(fits)} node{'s offer' if len(fits) > 1 else ' offers'} the rest of "
                "the request")
    else:
        over = [k for k, _ in asked if k]
        what = "no one node offers all of it"
    keys = ", ".join(f"hydra.launcher.{k}" for k in over)
    return f"{keys}: {what} in partition {part.name} ({offer}); nothing was submitted"


def unsatisfiable(launcher: Mapping) -> str | None:
    """Why a SLURM launcher request can never run in its partition, as one line; None when it
    can, when the launcher is not SLURM's, or when `sinfo` is missing or does not answer (then
    submitting fails or succeeds on its own).

    Args:
        launcher: the `hydra.launcher` config (hydra-submitit-launcher's keys).

    Returns:
        A message naming the launcher keys and what the partition offers, or None.
    """
    if not is_slurm_launcher(launcher) or shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    part = parse_sinfo(out.stdout, launcher.get("partition"))
    if isinstance(part, str):
        return part
    return check_request(request(launcher), part)


# Waiting for every task of a submitted array. hydra-submitit-launcher waits for its jobs one
# after another and raises submitit's UncompletedJobError at the first task that ended without a
# result (cancelled, timed out, killed), leaving the later tasks running; these helpers let a
# sweeper find the tasks it submitted and wait until SLURM has ended every one of them.

# States after which a task never runs again (sacct's State, first word).
FINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"}
_TASK = re.compile(r"\d+_\d+")


def submitted_tasks(submitit_dir: Path, before: Iterable[str] = ()) -> list[str]:
    """The array tasks (`ARRAY_TASK` ids) submitit has submitted into a folder, in array order.

    submitit makes a folder `ARRAY_TASK` for every task when it submits the array, so the
    listing taken before a launch (`before`) tells which tasks that launch submitted.

    Args:
        submitit_dir: the launcher's `submitit_folder` without its `%j` (`SWEEP/.submitit`).
        before: names in that folder before the launch, to leave out.

    Returns:
        Task ids such as `["42_0", "42_1"]`, sorted by array id, then task index: for one launch,
        task i runs job i of the batch it was given.
    """
    if not submitit_dir.is_dir():
        return []
    skip = set(before)
    names = [d.name for d in submitit_dir.iterdir() if _TASK.fullmatch(d.name)
             and d.name not in skip]
    return sorted(names, key=lambda n: tuple(int(x) for x in n.split("_")))


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def task_states(task_ids: Iterable[str]) -> dict[str, str]:
    """{task id: state} from SLURM's accounting (sacct); a task it does not list is absent."""
    ids = set(task_ids)
    arrays = sorted({t.split("_")[0] for t in ids})
    if not arrays:
        return {}
    out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)])
    rows = (line.split("|") for line in out.stdout.splitlines() if line.count("|") == 1)
    return {jid: state.split()[0] for jid, state in rows if jid in ids}


def wait_for_tasks(task_ids: Iterable[str], poll_s: float = 2.0,
                   accounting_s: float = 10.0) -> dict[str, str]:
    """Waits until SLURM has ended every task, and returns how each ended.

    The live queue (squeue) says when no task is pending or running any more; accounting
    (sacct), which lags a second or so behind it, then says how each ended.

    Args:
        task_ids: `ARRAY_TASK` ids, e.g. from submitted_tasks.
        poll_s: seconds between two looks at the queue.
        accounting_s: how long to wait for accounting to record the final states.

    Returns:
        {task id: state}: `COMPLETED`, `CANCELLED`, `FAILED`, `TIMEOUT`, ...; `UNKNOWN` where
        accounting has no final state after accounting_s: a task cancelled while it was still
        pending in its array leaves no record at all (SLURM 22.05), nor does any task without
        slurmdbd.
    """
    ids = set(task_ids)
    arrays = ",".join(sorted({t.split("_")[0] for t in ids}))
    while ids:
        out = _run(["squeue", "-h", "-r", "-o", "%i", "-j", arrays])
        # A job that ended long ago is unknown to the controller: squeue fails on it.
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            raise RuntimeError(f"squeue: {out.stderr.strip()}")
        if not ids & set(out.stdout.split()):
            break
        time.sleep(poll_s)
    end = time.time() + accounting_s
    while True:
        states = task_states(ids)
        if all(states.get(t) in FINAL_STATES for t in ids) or time.time() > end:
            return {t: states[t] if states.get(t) in FINAL_STATES else "UNKNOWN"
                    for t in sorted(ids)}
        time.sleep(0.5)
