"""SLURM beside hydra-submitit-launcher: refuse a request no node can run, wait for an array.

A request beyond every node of its partition is rejected by sbatch in some cases (a GPU where
no node has one, more memory than any node) but in others it is accepted and then pends forever
(more CPUs than any node: `Reason=PartitionConfig`), while Hydra waits in silence.
`unsatisfiable` reads the partition's nodes with `sinfo` and compares them with the launcher's
keys before anything is submitted.

`wait_for_tasks` waits until SLURM has ended every task of a submitted array and says how each
ended, `task_return` makes a job's JobReturn from that (rnnjax's SLURM launcher,
hydra_plugins/rnnjax_sweeper/slurm_launcher.py, uses both), `cancel` cancels arrays, and
`submitted_tasks` lists the tasks submitit submitted into its folder.
"""

import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
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
# result (cancelled, timed out, killed), leaving the later tasks running; and it never returns
# when a task is cancelled while still pending (SLURM keeps no record of such a task). rnnjax's
# SLURM launcher (hydra_plugins/rnnjax_sweeper/slurm_launcher.py) submits as it does, then waits
# for every task with `wait_for_tasks` and makes each job's JobReturn with `task_return`.

# States after which a task never runs again (squeue's and sacct's State, first word).
FINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"}
_TASK = re.compile(r"\d+(_\d+)?")
SQUEUE_PATIENCE_S = 300.0  # how long wait_for_tasks bears with squeue failing before it gives up


class TaskEnded(RuntimeError):
    """A SLURM task ended without a result: cancelled, timed out, killed, or never started."""

    def __init__(self, task_id: str, state: str) -> None:
        why = (" (SLURM has no record of how it ended, as for a task cancelled before it "
               "started)") if state == "UNKNOWN" else ""
        super().__init__(f"SLURM task {task_id} ended {state} without a result{why}")
        self.task_id = task_id
        self.state = state


def submitted_tasks(submitit_dir: Path, before: Iterable[str] = ()) -> list[str]:
    """The SLURM tasks submitit has submitted into a folder, in order.

    submitit makes a folder for every task it submits, named by the task's id, which holds
    `ID_submitted.pkl`: `ARRAY_TASK` for a task of an array, a plain `JOB` for a launch of one
    job (submitit submits a single job without an array); an array's own folder `ARRAY` holds
    only its submission script. The listing taken before a launch (`before`) tells which tasks
    that launch submitted.

    Args:
        submitit_dir: the launcher's `submitit_folder` without its `%j` (`SWEEP/.submitit`).
        before: names in that folder before the launch, to leave out.

    Returns:
        Task ids such as `["42_0", "42_1", "45"]`, sorted by job id, then task index: for one
        launch, task i runs job i of the batch it was given.
    """
    if not submitit_dir.is_dir():
        return []
    skip = set(before)
    names = [d.name for d in submitit_dir.iterdir() if _TASK.fullmatch(d.name)
             and d.name not in skip and (d / f"{d.name}_submitted.pkl").is_file()]
    return sorted(names, key=_task_key)


def _task_key(task_id: str) -> tuple[int, ...]:
    return tuple(int(x) for x in task_id.split("_"))


def _arrays(task_ids: Iterable[str]) -> list[str]:
    return sorted({t.split("_")[0] for t in task_ids}, key=int)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def expand_task_ids(job_id: str) -> list[str]:
    """The task ids a JobID of SLURM's stands for: `42_3` -> `[42_3]`; an array's pending
    remainder, `42_[1-3,7%2]` (`%2`: at most 2 at once) -> `[42_1, 42_2, 42_3, 42_7]`."""
    m = re.fullmatch(r"(\d+)_\[([0-9,-]+)(?:%\d+)?\]", job_id)
    if m is None:
        return [job_id]
    ids = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def task_states(task_ids: Iterable[str]) -> dict[str, str]:
    """{task id: state} from SLURM's accounting (sacct); a task it does not list is absent.

    A task still in its array's pending remainder (one record `42_[1-3]`) gets that record's
    state: CANCELLED when the remaining pending tasks were cancelled together.
    """
    ids = set(task_ids)
    if not ids:
        return {}
    out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(_arrays(ids))])
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 1]
    states: dict[str, str] = {}
    # A task's own record wins over the pending remainder's: the remainders go first.
    for jid, state in sorted(rows, key=lambda r: "[" not in r[0]):
        states.update({t: state.split()[0] for t in expand_task_ids(jid) if t in ids})
    return states


def queue_states(task_ids: Iterable[str]) -> dict[str, str]:
    """{task id: state} of the tasks SLURM's controller still holds (`squeue -t all`): pending
    and running ones, and those that ended less than MinJobAge ago (300 s by default).

    It forgets a task cancelled while pending at once."""
    ids = set(task_ids)
    if not ids:
        return {}
    out = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(_arrays(ids))])
    # A job that ended long ago is unknown to the controller: squeue fails on it.
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise RuntimeError(f"squeue: {out.stderr.strip()}")
    rows = (line.split("|") for line in out.stdout.splitlines() if line.count("|") == 1)
    return {jid: state.split()[0] for jid, state in rows if jid in ids}


def wait_for_tasks(task_ids: Iterable[str], poll_s: float = 0.5, accounting_s: float = 10.0,
                   max_poll_s: float = 10.0) -> dict[str, str]:
    """Waits until SLURM has ended every task, and returns how each ended.

    The controller (`squeue -t all`) says which tasks still pend or run, and how the others
    ended, without accounting's lag. A task it no longer holds without a final state is looked
    up in accounting (sacct), which lags a second or so behind.

    Args:
        task_ids: `ARRAY_TASK` ids, e.g. from submitted_tasks or submitit's `job.job_id`.
        poll_s: the shortest wait between two looks at the queue. Each wait is a tenth of
            the time waited so far (at least poll_s, at most max_poll_s): a sweep is told its
            tasks ended within a tenth of their time, and a long sweep asks the controller
            rarely.
        accounting_s: how long to wait for accounting to record how a task ended that ran but
            that the controller no longer holds.
        max_poll_s: the longest wait between two looks at the queue.

    Returns:
        {task id: state}: `COMPLETED`, `CANCELLED`, `FAILED`, `TIMEOUT`, ...; `UNKNOWN` where
        SLURM has no final state: a task cancelled while it was still pending in its array
        leaves no record at all (SLURM 22.05; it is answered at once, without waiting for
        accounting), nor does any task without slurmdbd.
    """
    ids = set(task_ids)
    seen: dict[str, str] = {}  # the last state the controller gave each task
    start, failing = time.time(), None
    while ids:
        try:
            queue = queue_states(ids)
            failing = None
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            # A busy controller times out now and then: the tasks are still there.
            failing = failing or time.time()
            if time.time() - failing > SQUEUE_PATIENCE_S:
                raise RuntimeError(f"squeue has failed for {SQUEUE_PATIENCE_S:g} s: {e}") from e
            queue = {t: "UNREACHABLE" for t in ids}
        seen.update({t: s for t, s in queue.items() if s != "UNREACHABLE"})
        active = [t for t in ids if t in queue and queue[t] not in FINAL_STATES]
        # A task not listed yet may not have reached the controller's listing: give it time.
        if not active and (len(seen) == len(ids) or time.time() - start > accounting_s):
            break
        time.sleep(min(max(poll_s, (time.time() - start) / 10), max_poll_s))
    ended = {t: s for t, s in seen.items() if s in FINAL_STATES}
    end = time.time() + accounting_s
    while rest := ids - set(ended):
        states = task_states(rest)
        ended.update({t: states[t] for t in rest if states.get(t) in FINAL_STATES})
        # Last seen pending, gone from the queue, unknown to accounting: cancelled before it
        # started, which SLURM never records.
        ended.update({t: "UNKNOWN" for t in rest if t not in states and seen.get(t) == "PENDING"})
        if time.time() > end:
            break
        if ids - set(ended):
            time.sleep(0.5)
    return {t: ended.get(t, "UNKNOWN") for t in sorted(ids, key=_task_key)}


def cancel(task_ids: Iterable[str]) -> list[str]:
    """Cancels the arrays these tasks belong to (`scancel ARRAY ...`; one launch of rnnjax's
    SLURM launcher submits one array) and returns their ids."""
    arrays = _arrays(task_ids)
    if arrays:
        _run(["scancel", *arrays])
    return arrays


def task_return(job: Any, state: str, overrides: Sequence[str], grace_s: float = 15.0) -> Any:
    """A submitted job's JobReturn, once SLURM has ended its task.

    submitit's `job.results()` is read only where the task left its result file: without one it
    waits for it, forever for a task cancelled while pending.

    Args:
        job: the submitit Job of the task (`job_id`, `paths.result_pickle`, `results()`).
        state: how SLURM says the task ended (from wait_for_tasks).
        overrides: the job's overrides.
        grace_s: how long a COMPLETED task's result file may take to appear (a shared file
            system can lag behind the node that wrote it; submitit waits 15 s as well).

    Returns:
        The job's own JobReturn, from its result file; a FAILED JobReturn whose value is the
        exception when the task raised outside the job (submitit's FailedJobError), or a
        `TaskEnded` naming the task and its state when it left no result.
    """
    from hydra.core.utils import JobReturn, JobStatus

    result = job.paths.result_pickle
    end = time.time() + (grace_s if state == "COMPLETED" else 0.0)
    while not result.exists() and time.time() < end:
        time.sleep(0.5)
    if result.exists():
        try:
            return job.results()[0]
        except Exception as e:
            value: BaseException = e
    else:
        value = TaskEnded(job.job_id, state)
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=value)
