"""Sweeps through the `slurm` launcher preset on a real SLURM cluster (as root:
`scripts/slurm_cluster.sh start`; the tests skip where no cluster answers), and the check that
refuses a request the partition can never run (also without a cluster, on sinfo's text)."""

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT
from helpers import RUN, TINY, run
from hydra.core.utils import JobReturn, JobStatus

import rnnjax.sweeps.slurm
from rnnjax.app.config import register_configs
from rnnjax.sweeps.slurm import (
    Partition,
    TaskEnded,
    expand_task_ids,
    parse_sinfo,
    request,
    submitted_tasks,
    task_return,
    task_states,
    unsatisfiable,
    wait_for_tasks,
)

# The README's overrides for a CPU-only node.
CPU_NODE = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
SMALL = ["seq_len=5", "hidden_size=4", "batch_size=2", "seeds=2"]
FINAL = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
SLURM_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def _no_cluster() -> str | None:
    """Why no SLURM cluster with accounting answers here; None when one does."""
    for cmd in ("sinfo", "sbatch", "squeue", "sacct", "scancel"):
        if shutil.which(cmd) is None:
            return f"no `{cmd}` on PATH"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                               timeout=20)
        acct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True,
                              timeout=20)
    except subprocess.TimeoutExpired as e:
        return f"`{' '.join(e.cmd)}` did not answer in 20 s"
    if nodes.returncode != 0:
        return f"sinfo: {nodes.stderr.strip()}"
    # `planned`: idle, its CPUs reserved by the backfill scheduler for a job about to start
    if not re.search(r"^(idle|mixed|allocated|completing|planned)", nodes.stdout, re.MULTILINE):
        return f"no node is up (sinfo: {' '.join(nodes.stdout.split()) or 'no nodes'})"
    if acct.returncode != 0:
        return f"no accounting (sacct: {acct.stderr.strip()})"
    return None


def _starting() -> bool:
    """Whether a cluster is still being started: .ci/run starts it in the background while the
    test command installs, and names the starting process in RNNJAX_SLURM_STARTING."""
    pid = os.environ.get("RNNJAX_SLURM_STARTING", "")
    try:  # running, not a zombie its shell has yet to reap
        return pid.isdigit() and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster():
    why = _no_cluster()
    while why and _starting():  # wait for the start to end, however it ends
        time.sleep(1)
        why = _no_cluster()
    if why:
        pytest.skip(f"no SLURM cluster answers here: {why} (as root: scripts/slurm_cluster.sh "
                    "start)")


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S")


def tasks(cwd, since: str) -> dict[str, str]:
    """{JobID: State} of the SLURM jobs submitted from `cwd` since `since`, as accounting has
    them now (it lags a little behind the queue; pending array tasks may appear as one row
    `ID_[1-2]`). The working directory tells this test's jobs from anyone else's."""
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-S", since,
                          "-o", "JobID,State,WorkDir"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 2]
    return {jid: state.split()[0] for jid, state, wd in rows if wd == str(cwd)}


def submitted(sweep) -> set[str]:
    """The SLURM tasks submitit submitted for a sweep: `ARRAY_TASK`, or `JOB` for a launch of
    one job (submitit submits it without an array)."""
    return set(submitted_tasks(sweep / ".submitit"))


def settled(cwd, since: str, ids: set[str], timeout: float = 60) -> dict[str, str]:
    """tasks(cwd, since) once accounting has every task of `ids` in a final state."""
    end = time.time() + timeout
    while True:
        now = tasks(cwd, since)
        if all(now.get(i) in FINAL for i in ids) or time.time() > end:
            return now
        time.sleep(0.3)


def job_dirs(sweep):
    """{overrides: job directory} of the jobs that started."""
    return {" ".join(yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())): d
            for d in sweep.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()}


def slurm_id(job) -> str:
    """The SLURM job id (`ARRAY_TASK`) a job directory was written by."""
    return str(yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"])


def closing_line(stderr: str) -> str:
    """The sweep's closing line (`rnnjax: sweep DIR: N jobs: ...`)."""
    lines = [line for line in stderr.splitlines() if line.startswith("rnnjax: sweep ")]
    assert lines, stderr
    return lines[-1]


def status(job) -> str:
    return json.loads((job / "summary.json").read_text())["status"]


@pytest.fixture(scope="module")
def finished_sweep(cluster, tmp_path_factory, jax_cache):
    """A two-job sweep through the preset with the CPU-node overrides, run once: its command,
    directories, and the SLURM tasks it submitted."""
    cwd = tmp_path_factory.mktemp("slurm_sweep")
    sweep = cwd / "sweep"
    args = ["-m", *CPU_NODE, f"hydra.sweep.dir={sweep}", "activation=tanh,relu", *SMALL]
    since = _now()
    p = run(args, cwd, jax_cache)
    return {"args": args, "cwd": cwd, "sweep": sweep, "since": since, "proc": p,
            "submitted": submitted(sweep), "tasks": settled(cwd, since, submitted(sweep))}


@pytest.mark.e2e
def test_sweep_runs_every_job_as_a_task_of_a_slurm_array(finished_sweep):
    jobs = job_dirs(finished_sweep["sweep"])
    assert len(jobs) == 2
    ids = {slurm_id(d) for d in jobs.values()}
    # Every job was written by a task of one array (ARRAY_TASK ids), which SLURM's accounting
    # records as COMPLETED, and finished.
    assert all(re.fullmatch(r"\d+_\d+", i) for i in ids), ids
    assert len({i.split("_")[0] for i in ids}) == 1
    assert finished_sweep["submitted"] == ids
    assert finished_sweep["tasks"] == {i: "COMPLETED" for i in ids}
    assert all(status(d) == "ok" for d in jobs.values())
    assert "2 jobs: 2 ok" in finished_sweep["proc"].stderr


@pytest.mark.e2e
def test_rerun_skips_finished_jobs_without_submitting_a_task(finished_sweep, app):
    cwd, sweep = finished_sweep["cwd"], finished_sweep["sweep"]
    r = app(*finished_sweep["args"], cwd=cwd)  # in-process: it submits nothing
    assert r.code == 0 and "2 jobs: 2 ok (2 skipped" in closing_line(r.err)
    assert all(status(d) == "ok" for d in job_dirs(sweep).values())
    # No new task: neither in submitit's folder nor in SLURM's accounting.
    assert submitted(sweep) == finished_sweep["submitted"]
    assert settled(cwd, finished_sweep["since"], submitted(sweep)) == finished_sweep["tasks"]


def _wait_running(cwd, task: int, timeout: float = 120) -> str:
    """The id (`ARRAY_TASK`) of task `task` of the array submitted from `cwd`, once it runs
    (squeue: the live queue, where accounting lags)."""
    end = time.time() + timeout
    while time.time() < end:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%Z"], capture_output=True,
                             text=True, timeout=30).stdout
        for jid, state, wd in (r.split("|") for r in out.splitlines() if r.count("|") == 2):
            if wd == str(cwd) and jid.endswith(f"_{task}") and state == "RUNNING":
                return jid
        time.sleep(0.2)
    raise AssertionError(f"task {task} did not start in {timeout} s")


def _wait_started(sweep, override: str, timeout: float = 120) -> None:
    """Waits until the job with this override has started: Hydra wrote its overrides (the
    sweep then counts it as begun, as interrupted where it did not finish)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            if any(override in o.split() for o in job_dirs(sweep)):
                return
        except (OSError, TypeError, yaml.YAMLError):  # not there yet, or being written
            pass
        time.sleep(0.05)
    raise AssertionError(f"the job {override} did not start in {timeout} s")


def _start(args, cwd, jax_cache) -> subprocess.Popen:
    """The command, started in the background."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(RUN + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**env, "JAX_COMPILATION_CACHE_DIR": jax_cache})


def _finish(proc: subprocess.Popen, array: str | None, timeout: float) -> str:
    """The command's stderr once it ends; after `timeout` s it is killed and its array
    cancelled, and the test fails: the sweep hung."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        if array:
            subprocess.run(["scancel", array], timeout=30)
        raise AssertionError(f"the sweep did not end within {timeout} s") from None


def _kill_now(task: str) -> None:
    """SIGKILLs what is left of a cancelled task's processes (`scontrol listpids`, on this
    node) at once, as slurmd does max(KillWait, 5) s after scancel: submitit's job ignores
    scancel's SIGTERM, and would otherwise run on, and hold the node, for those 5 s."""
    raw = subprocess.run(["squeue", "-h", "-t", "all", "-j", task, "-o", "%A"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    if not raw:
        return
    out = subprocess.run(["scontrol", "listpids", raw[0]], capture_output=True, text=True,
                         timeout=30).stdout
    for row in out.splitlines()[1:]:  # PID JOBID STEPID LOCALID GLOBALID
        try:
            os.kill(int(row.split()[0]), signal.SIGKILL)
        except (ProcessLookupError, ValueError, IndexError):
            pass


@pytest.mark.e2e
@pytest.mark.slow
def test_cancelled_task_is_reported_and_only_it_runs_again(cluster, tmp_path, jax_cache,
                                                           app):
    sweep = tmp_path / "sweep"
    # One quick job and one that compiles and trains for 2-3 s on 2 cores, which is cancelled
    # as soon as Hydra has started it, with its processes killed right after scancel (the
    # SIGKILL slurmd would send 5 s later, _kill_now): mid-run, whatever the machine's load.
    args = ["-m", *CPU_NODE, f"hydra.sweep.dir={sweep}", "train.steps=0,30000",
            "train.log_every=10000", *SMALL]
    since = _now()
    proc = _start(args, tmp_path, jax_cache)
    slow = None
    try:
        # map_array submits the jobs in order: task 1 is train.steps=30000. It is cancelled
        # once its job has started (mid-run: Hydra wrote its overrides).
        slow = _wait_running(tmp_path, 1)
        _wait_started(sweep, "train.steps=30000")
        subprocess.run(["scancel", slow], check=True, timeout=30)
        _kill_now(slow)
    finally:
        err = _finish(proc, slow and slow.split("_")[0], timeout=240)
    # When the command returns, every job is accounted for: the quick one finished, the
    # cancelled one is listed as failed with its overrides and state, in one line, without a
    # traceback.
    jobs = job_dirs(sweep)
    quick = next(d for o, d in jobs.items() if "train.steps=0" in o.split())
    assert status(quick) == "ok"
    cancelled = next(d for o, d in jobs.items() if "train.steps=30000" in o.split())
    assert not (cancelled / "summary.json").exists()
    first = settled(tmp_path, since, submitted(sweep), timeout=10)
    assert len(first) == 2 and all(s in FINAL for s in first.values()), first
    assert first[slow] == "CANCELLED"
    assert proc.returncode == 1
    assert "Traceback" not in err
    line = closing_line(err)
    assert line.endswith(f"2 jobs: 1 failed, 1 ok; failed: train.steps=30000 "
                         f"train.log_every=10000 {' '.join(SMALL)} (SLURM task {slow} ended "
                         f"CANCELLED without a result)")

    # The re-run (in-process) submits one task, for the cancelled job only, and it finishes.
    r = app(*args, cwd=tmp_path)
    assert r.code == 0, r.err
    new = submitted(sweep) - set(first)
    assert len(new) == 1, new
    now = settled(tmp_path, since, new)
    assert {j: s for j, s in now.items() if j not in first} == {next(iter(new)): "COMPLETED"}
    jobs = job_dirs(sweep)
    assert all(status(d) == "ok" for d in jobs.values())
    redone = next(d for o, d in jobs.items() if "train.steps=30000" in o.split())
    assert slurm_id(redone) == next(iter(new))
    assert slurm_id(quick) in first
    assert "2 jobs: 2 ok (1 skipped" in closing_line(r.err)


@pytest.mark.e2e
@pytest.mark.slow
def test_task_cancelled_while_pending_does_not_hang_the_sweep(cluster, tmp_path, jax_cache):
    sweep = tmp_path / "sweep"
    # One task at a time: task 2 is cancelled while it pends behind tasks 0 and 1, which leaves
    # no record of it anywhere in SLURM (submitit would wait for it forever).
    args = ["-m", *CPU_NODE, "hydra.launcher.array_parallelism=1", f"hydra.sweep.dir={sweep}",
            "seed=0,1,2", *SMALL]
    proc = _start(args, tmp_path, jax_cache)
    array = None
    try:
        array = _wait_running(tmp_path, 0).split("_")[0]
        subprocess.run(["scancel", f"{array}_2"], check=True, timeout=30)
    finally:
        err = _finish(proc, array, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err
    assert closing_line(err).endswith(
        f"3 jobs: 1 failed, 2 ok; failed: seed=2 {' '.join(SMALL)} (SLURM task {array}_2 ended "
        "UNKNOWN without a result (SLURM has no record of how it ended, as for a task cancelled "
        "before it started))")
    assert sorted(o.split()[0] for o in job_dirs(sweep)) == ["seed=0", "seed=1"]


def _offers():
    """(CPUs, memory in MB, GPUs) of the default partition's largest node, from sinfo."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    rows = [r.split("|") for r in out.splitlines() if r.split("|")[0].endswith("*")]
    return (max(int(r[1]) for r in rows), max(int(r[2]) for r in rows),
            sum(1 for r in rows if "gpu" in r[3]))


def test_unsatisfiable_request_fails_with_one_line_and_submits_nothing(
        cluster, tmp_path, app):
    # The preset's defaults on a CPU-only partition: sbatch would reject the GPU request.
    cpus, mem_mb, gpus = _offers()
    if gpus:
        pytest.skip("the default partition has GPUs: the preset's defaults may fit")
    since = _now()
    r = app("-m", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "activation=tanh,relu", *SMALL)  # in-process: it submits nothing
    assert r.code != 0
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnjax: error: "), r.err
    assert "hydra.launcher.gpus_per_node=1" in lines[0]
    assert f"at most {cpus} CPUs, {gpus} GPUs and {mem_mb / 1024:.1f} GB" in lines[0]
    assert not (tmp_path / "sweep").exists()
    assert tasks(tmp_path, since) == {} and submitted(tmp_path / "sweep") == set()


def app_config(overrides):
    """The app's composed config, `hydra` included, with these overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def launcher_config(overrides):
    """The composed `hydra.launcher` config of the app with these overrides."""
    return app_config(overrides).hydra.launcher


def test_cpu_request_beyond_every_node_is_refused(cluster):
    # sbatch would accept it and the job would pend forever (Reason=PartitionConfig).
    cpus, mem_mb, gpus = _offers()
    over = [*CPU_NODE, f"hydra.launcher.cpus_per_task={cpus + 1}"]
    message = unsatisfiable(launcher_config(over))
    assert message is not None and message.startswith(
        f"hydra.launcher.cpus_per_task={cpus + 1}: more than any node offers"), message
    assert unsatisfiable(launcher_config(CPU_NODE)) is None


@pytest.mark.e2e
def test_wait_for_tasks_waits_for_every_task_and_says_how_it_ended(cluster, tmp_path):
    # One task at a time (%1): task 0 is cancelled while it runs (it would sleep for a
    # minute), task 2 while it is still pending in the array, which leaves no accounting record
    # (submitit then waits forever); task 1 sleeps for a second and completes.
    out = subprocess.run(["sbatch", "--parsable", "--array=0-2%1", "--mem=100M",
                          f"--output={tmp_path}/%A_%a.out", "--wrap",
                          "sleep $((SLURM_ARRAY_TASK_ID == 1 ? 1 : 60))"], cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=30)
    ids = [f"{out.stdout.strip().split(';')[0]}_{i}" for i in range(3)]
    assert _wait_running(tmp_path, 0) == ids[0]
    subprocess.run(["scancel", ids[0], ids[2]], check=True, timeout=30)
    # Task 2 leaves the queue at once, unseen, and accounting never records it: it is UNKNOWN
    # once accounting_s has passed (twice: for the queue's listing, then for accounting).
    assert wait_for_tasks(ids, poll_s=0.5, accounting_s=1) == {
        ids[0]: "CANCELLED", ids[1]: "COMPLETED", ids[2]: "UNKNOWN"}
    queue = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True,
                           timeout=30).stdout.split()
    assert not set(ids) & set(queue)


@pytest.mark.e2e
@pytest.mark.slow
def test_ctrl_c_cancels_the_array_and_says_so_in_one_line(cluster, tmp_path, jax_cache):
    # The last of the tests that submit: SLURM starts nothing while a cancelled task is
    # COMPLETING (5 s or more when slurmd kills it, max(KillWait, 5) s after scancel). The job
    # compiles and trains for 2-3 s: it is still running when the sweep cancels it.
    sweep = tmp_path / "sweep"
    args = ["-m", *CPU_NODE, "hydra.launcher.array_parallelism=1", f"hydra.sweep.dir={sweep}",
            "train.steps=30000,0", "train.log_every=10000", *SMALL]
    proc = _start(args, tmp_path, jax_cache)
    array = None
    try:
        slow = _wait_running(tmp_path, 0)
        array = slow.split("_")[0]
        _wait_started(sweep, "train.steps=30000")  # mid-run
        proc.send_signal(signal.SIGINT)
    finally:
        err = _finish(proc, array, timeout=60)
        if array:
            _kill_now(slow)  # the sweep cancelled it: slurmd's SIGKILL, 5 s early
    assert proc.returncode == 130 and "Traceback" not in err
    assert closing_line(err) == (
        f"rnnjax: sweep {sweep} interrupted: 0 of 2 jobs finished; interrupted: "
        f"train.steps=30000 train.log_every=10000 {' '.join(SMALL)}; 1 not started; cancelled its "
        f"SLURM array {array}; the same command resumes the sweep")
    # Nothing of the array is left: accounting has the running task cancelled (at once; the
    # queue lists it COMPLETING while its processes are killed, 5 s or more for a task that
    # ignores SIGTERM) and the pending one cancelled or never recorded: it never ran.
    end = time.time() + 30
    while (states := task_states([slow, f"{array}_1"])).get(slow) not in FINAL \
            and time.time() < end:
        time.sleep(0.3)
    assert states[slow] == "CANCELLED" and states.get(f"{array}_1", "CANCELLED") == "CANCELLED"


def test_submitted_tasks_lists_a_launch_in_array_order(tmp_path):
    # Arrays 7 and 9 (their own folders hold only the submission script), job 8 alone.
    folder = tmp_path / ".submitit"
    for name in ["7", "7_0", "7_1", "8", "9", "9_10", "9_2", "9_0", "notes", "10_0"]:
        (folder / name).mkdir(parents=True)
        if "_" in name or name == "8":
            (folder / name / f"{name}_submitted.pkl").touch()
        (folder / name / f"{name}_submission.sh").touch()
    (folder / "10_0" / "10_0_submitted.pkl").unlink()  # not submitted yet
    assert submitted_tasks(folder) == ["7_0", "7_1", "8", "9_0", "9_2", "9_10"]
    assert submitted_tasks(folder, before=["7", "7_0", "7_1", "8"]) == ["9_0", "9_2", "9_10"]
    assert submitted_tasks(tmp_path / "none") == []


# The check itself, on sinfo's text: runs without a cluster.

SINFO = """\
cpu*|c1|2|7800|(null)|infinite
cpu*|c2|2|7800|(null)|infinite
gpu|g1|64|512000|gpu:a100:4(S:0-1)|2-00:00:00
gpu|g2|32|1024000+|gpu:2,shard:8|2-00:00:00
short|c1|2|7800|(null)|30:00
"""


def launcher(**kw):
    base = {"_target_": SLURM_TARGET, "timeout_min": 60, "partition": None, "gpus_per_node": 0,
            "cpus_per_task": 1, "mem_gb": 1, "nodes": 1, "tasks_per_node": 1}
    return {**base, **kw}


def check(sinfo=SINFO, **kw):
    from rnnjax.sweeps.slurm import check_request

    part = parse_sinfo(sinfo, kw.get("partition"))
    return part if isinstance(part, str) else check_request(request(launcher(**kw)), part)


def test_parse_sinfo_reads_nodes_gpus_and_time_limits():
    cpu = parse_sinfo(SINFO, None)
    assert isinstance(cpu, Partition) and cpu.name == "cpu" and cpu.max_minutes is None
    assert [(n.name, n.cpus, n.mem_mb, n.gpus) for n in cpu.nodes] == [
        ("c1", 2, 7800, 0), ("c2", 2, 7800, 0)]
    gpu = parse_sinfo(SINFO, "gpu")
    assert [n.gpus for n in gpu.nodes] == [4, 2] and gpu.max_minutes == 2 * 24 * 60
    assert parse_sinfo(SINFO, "short").max_minutes == 30


@pytest.mark.parametrize("kw,message", [
    ({}, None),
    ({"cpus_per_task": 2, "mem_gb": 7}, None),
    ({"nodes": 2}, None),
    ({"partition": "gpu", "gpus_per_node": 4, "cpus_per_task": 16, "mem_gb": 400}, None),
    ({"partition": "gpu", "gres": "gpu:a100:4"}, None),
    ({"partition": "gpu", "gpus_per_node": 4, "nodes": 2},
     "hydra.launcher.nodes=2: only 1 node offers the rest of the request"),
    ({"cpus_per_task": 3}, "hydra.launcher.cpus_per_task=3: more than any node offers in "
     "partition cpu (2 nodes with at most 2 CPUs, 0 GPUs and 7.6 GB of memory each)"),
    ({"cpus_per_task": 2, "tasks_per_node": 2}, "cpus_per_task=2 x tasks_per_node=2"),
    ({"mem_gb": 8}, "hydra.launcher.mem_gb=8: more than any node"),
    ({"mem_gb": None, "mem_per_cpu": "4G", "cpus_per_task": 2}, "hydra.launcher.mem_per_cpu=4G"),
    ({"gpus_per_node": 1}, "hydra.launcher.gpus_per_node=1: more than any node"),
    ({"gres": "gpu:1"}, "hydra.launcher.gres=gpu:1"),
    ({"partition": "gpu", "gpus_per_node": 4, "cpus_per_task": 64, "mem_gb": 300}, None),
    ({"partition": "gpu", "gpus_per_node": 3, "mem_gb": 600},
     "no one node offers all of it"),
    ({"partition": "short", "timeout_min": 31}, "hydra.launcher.timeout_min=31 is over "
     "partition short's time limit of 30 minutes"),
    ({"partition": "nope"}, "hydra.launcher.partition=nope: no such partition (partitions: "
     "cpu, gpu, short)"),
])
def test_check_request(kw, message):
    got = check(**kw)
    if message is None:
        assert got is None
    else:
        assert got is not None and message in got, got
        assert "\n" not in got


def test_no_default_partition_and_other_launchers():
    assert "no default partition" in check(SINFO.replace("cpu*", "cpu"))
    # Not SLURM's launcher: nothing to check, sinfo is not asked.
    assert unsatisfiable({"_target_": "hydra._internal.core_plugins.basic_launcher."
                          "BasicLauncher"}) is None
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
    assert unsatisfiable(joblib) is None


def test_no_sinfo_means_no_check(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert unsatisfiable(launcher(cpus_per_task=10**6)) is None



# rnnjax's SLURM launcher and the sweeper's account of its jobs, with fake jobs and a fake
# SLURM: run without a cluster.


class FakeJob:
    """A submitit Job as the launcher reads it: `job_id`, `paths.result_pickle`, `results()`
    (which fails the test where the real one would wait forever: without a result file)."""

    def __init__(self, job_id, folder, result=None, error=None):
        self.job_id = job_id
        self.paths = SimpleNamespace(result_pickle=folder / f"{job_id}_result.pkl")
        self.result, self.error, self.reads = result, error, 0
        if result is not None or error is not None:
            self.paths.result_pickle.touch()

    def results(self):
        self.reads += 1
        assert self.paths.result_pickle.exists(), "results() without a result file waits"
        if self.error is not None:
            raise self.error
        return [self.result]


@pytest.mark.e2e
def test_task_return_reads_a_result_only_where_the_task_left_one(tmp_path):
    ok = JobReturn(overrides=["seed=0"], status=JobStatus.COMPLETED,
                   _return_value={"status": "ok", "error": None})
    done = FakeJob("7_0", tmp_path, result=ok)
    assert task_return(done, "COMPLETED", ["seed=0"]) is ok
    # A task cancelled after its job returned: the result counts.
    assert task_return(FakeJob("7_5", tmp_path, result=ok), "CANCELLED", ["seed=0"]) is ok
    for state, why in [("CANCELLED", ""), ("TIMEOUT", ""), ("UNKNOWN", " (SLURM has no record "
                       "of how it ended, as for a task cancelled before it started)")]:
        job = FakeJob("7_1", tmp_path)
        ret = task_return(job, state, ["seed=1"], grace_s=0.0)
        assert job.reads == 0
        assert ret.status == JobStatus.FAILED and ret.overrides == ["seed=1"]
        assert isinstance(ret._return_value, TaskEnded)
        assert str(ret._return_value) == f"SLURM task 7_1 ended {state} without a result{why}"
        assert (ret._return_value.task_id, ret._return_value.state) == ("7_1", state)
    # The task raised outside the job: submitit's error, as a failed job.
    boom = RuntimeError("Job (task=0) failed during processing with trace:\n...")
    ret = task_return(FakeJob("7_2", tmp_path, error=boom), "COMPLETED", ["seed=2"])
    assert ret.status == JobStatus.FAILED and ret._return_value is boom
    # A COMPLETED task's result file may lag behind (a shared file system): it is waited for.
    late = FakeJob("7_3", tmp_path)
    late.result = ok
    timer = threading.Timer(0.3, late.paths.result_pickle.touch)
    timer.start()
    try:
        assert task_return(late, "COMPLETED", ["seed=3"], grace_s=30.0) is ok
    finally:
        timer.cancel()
    # ... but not for ever.
    t0 = time.time()
    ret = task_return(FakeJob("7_4", tmp_path), "COMPLETED", ["seed=4"], grace_s=0.6)
    assert str(ret._return_value) == "SLURM task 7_4 ended COMPLETED without a result"
    assert time.time() - t0 >= 0.6


class FakeSlurm:
    """squeue and sacct answering from scripts (one answer per call, the last one repeated),
    scancel recorded, and a clock that sleeps without waiting."""

    def __init__(self, squeue, sacct=("",)):
        self.answers = {"squeue": list(squeue), "sacct": list(sacct)}
        self.calls, self.now = [], 0.0

    def run(self, cmd):
        self.calls.append(cmd)
        script = self.answers.get(cmd[0], [""])
        out = script.pop(0) if len(script) > 1 else script[0]
        if out.startswith("error: "):  # the controller did not answer
            return subprocess.CompletedProcess(cmd, 1, "", out)
        return subprocess.CompletedProcess(cmd, 0, out, "")

    def count(self, name):
        return sum(c[0] == name for c in self.calls)


@pytest.fixture
def fake_slurm(monkeypatch):
    def make(squeue, sacct=("",)):
        fake = FakeSlurm(squeue, sacct)
        monkeypatch.setattr(rnnjax.sweeps.slurm, "_run", fake.run)
        monkeypatch.setattr(rnnjax.sweeps.slurm, "time", SimpleNamespace(
            time=lambda: fake.now, sleep=lambda s: setattr(fake, "now", fake.now + s)))
        return fake
    return make


def test_wait_for_tasks_answers_a_task_cancelled_while_pending_at_once(fake_slurm):
    # Task 2 is cancelled while pending behind tasks 0 and 1: it leaves the queue, and SLURM
    # keeps no record of it. The others' ends come from the controller, without accounting.
    fake = fake_slurm(["7_0|RUNNING\n7_1|PENDING\n7_2|PENDING",
                       "7_0|COMPLETED\n7_1|RUNNING",
                       "7_0|COMPLETED\n7_1|CANCELLED"],
                      sacct=["7_0|COMPLETED\n7_1|CANCELLED by 0"])
    assert wait_for_tasks(["7_2", "7_0", "7_1"], accounting_s=10) == {
        "7_0": "COMPLETED", "7_1": "CANCELLED", "7_2": "UNKNOWN"}
    assert fake.count("squeue") == 3 and fake.count("sacct") == 1
    assert fake.now < 10  # no wait for accounting
    squeue = next(c for c in fake.calls if c[0] == "squeue")
    assert squeue[squeue.index("-j") + 1] == "7" and "all" in squeue


def test_wait_for_tasks_asks_accounting_for_what_the_controller_forgot(fake_slurm):
    # A task the controller no longer holds (older than MinJobAge): accounting, which may lag.
    fake = fake_slurm(["7_0|RUNNING", ""], sacct=["7_0|RUNNING", "7_0|RUNNING", "7_0|COMPLETED"])
    assert wait_for_tasks(["7_0"], accounting_s=10) == {"7_0": "COMPLETED"}
    assert fake.count("sacct") == 3
    # ... up to accounting_s, then UNKNOWN.
    fake = fake_slurm(["7_0|RUNNING", ""], sacct=["7_0|RUNNING"])
    assert wait_for_tasks(["7_0"], accounting_s=3) == {"7_0": "UNKNOWN"}
    assert 3 <= fake.now < 5
    # The pending remainder of an array cancelled together: one record, `7_[1-2%1]`.
    fake_slurm(["7_0|RUNNING\n7_1|PENDING\n7_2|PENDING", "7_0|COMPLETED"],
               sacct=["7_0|COMPLETED\n7_[1-2%1]|CANCELLED by 0"])
    assert wait_for_tasks(["7_0", "7_1", "7_2"]) == {
        "7_0": "COMPLETED", "7_1": "CANCELLED", "7_2": "CANCELLED"}
    # A job launched alone (submitit submits one job without an array) has a plain id.
    fake_slurm(["9|PENDING", "9|RUNNING", "9|TIMEOUT"])
    assert wait_for_tasks(["9"]) == {"9": "TIMEOUT"}


def test_wait_for_tasks_gives_a_task_time_to_reach_the_queue(fake_slurm):
    # Not listed yet right after submission: not taken for gone.
    fake = fake_slurm(["", "", "7_0|PENDING", "7_0|RUNNING", "7_0|COMPLETED"])
    assert wait_for_tasks(["7_0"], poll_s=0.5, accounting_s=10) == {"7_0": "COMPLETED"}
    assert fake.count("sacct") == 0
    # The wait between two looks is a tenth of the time waited so far, at least poll_s and at
    # most max_poll_s: a task that ran for a while is seen ended within a tenth of its time.
    fake = fake_slurm(["7_0|RUNNING"] * 60 + ["7_0|COMPLETED"])
    wait_for_tasks(["7_0"], poll_s=0.5, max_poll_s=10)
    waited = []
    for _ in range(60):
        waited.append(min(max(0.5, sum(waited) / 10), 10))
    assert fake.now == pytest.approx(sum(waited))
    assert waited[0] == 0.5 and waited[-1] == 10 and 0.5 < waited[30] < 10  # every regime


def test_wait_for_tasks_bears_with_a_busy_controller(fake_slurm):
    timeout = "error: slurm_load_jobs error: Socket timed out on send/recv operation"
    fake = fake_slurm(["7_0|RUNNING", timeout, timeout, "7_0|COMPLETED"])
    assert wait_for_tasks(["7_0"]) == {"7_0": "COMPLETED"}
    assert fake.count("squeue") == 4
    # ... for a while: then the launcher raises, and the sweep accounts for its jobs from disk.
    fake_slurm(["7_0|RUNNING", timeout])
    with pytest.raises(RuntimeError, match="squeue has failed for 300 s: squeue: error: "
                       "slurm_load_jobs error: Socket timed out"):
        wait_for_tasks(["7_0"])


def test_expand_task_ids():
    assert expand_task_ids("42_3") == ["42_3"]
    assert expand_task_ids("42") == ["42"]
    assert expand_task_ids("42_[1-3,7%2]") == ["42_1", "42_2", "42_3", "42_7"]
    assert expand_task_ids("42_[5]") == ["42_5"]


@pytest.fixture
def slurm_launcher(tmp_path, monkeypatch):
    """rnnjax's SLURM launcher, set up from the `slurm` preset with the CPU-node overrides, with
    submitit's submission (map_array) faked: `(launcher, submitted)`, where `submitted` gets
    the function and arguments submitit was given. Needs hydra-submitit-launcher, not SLURM."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    from hydra_plugins.rnnjax_sweeper.slurm_launcher import SlurmLauncher

    setup_globals()
    cfg = app_config([*CPU_NODE, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_") == "hydra_plugins.rnnjax_sweeper.slurm_launcher.SlurmLauncher"
    launcher = SlurmLauncher(**params)
    launcher.setup(hydra_context=None, task_function=lambda cfg: None, config=cfg)
    # submitit's SLURM executor looks for srun; what it submits is faked below.
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    submitted = []

    def map_array(executor, fn, *iterable):
        submitted.append((fn, [list(a) for a in zip(*iterable, strict=True)]))
        return list(launcher.fake_jobs)

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    return launcher, submitted


def test_slurm_launcher_returns_one_outcome_per_job(slurm_launcher, tmp_path, monkeypatch):
    launcher, submitted = slurm_launcher
    ok = JobReturn(overrides=["seed=0"], status=JobStatus.COMPLETED,
                   _return_value={"status": "ok", "error": None})
    launcher.fake_jobs = [FakeJob("7_0", tmp_path, result=ok), FakeJob("7_1", tmp_path),
                          FakeJob("7_2", tmp_path)]
    waited = []

    def wait(ids):
        waited.append(list(ids))
        return {"7_0": "COMPLETED", "7_1": "CANCELLED", "7_2": "UNKNOWN"}

    monkeypatch.setattr(rnnjax.sweeps.slurm, "wait_for_tasks", wait)
    overrides = [["seed=0"], ["seed=1"], ["seed=2"]]
    rets = launcher.launch(overrides, initial_job_idx=4)
    # Submitted as hydra-submitit-launcher does: the launcher itself is the task function.
    (fn, args), = submitted
    assert fn is launcher
    assert [(a[0], a[1], a[2]) for a in args] == [
        (o, "hydra.sweep.dir", 4 + i) for i, o in enumerate(overrides)]
    assert waited == [["7_0", "7_1", "7_2"]]
    assert rets[0] is ok
    assert [(r.status, r.overrides, str(r._return_value)) for r in rets[1:]] == [
        (JobStatus.FAILED, ["seed=1"], "SLURM task 7_1 ended CANCELLED without a result"),
        (JobStatus.FAILED, ["seed=2"], "SLURM task 7_2 ended UNKNOWN without a result (SLURM "
         "has no record of how it ended, as for a task cancelled before it started)")]
    assert [j.reads for j in launcher.fake_jobs] == [1, 0, 0]
    # The folder whose pickles the launcher loads is its owner's alone.
    assert (tmp_path / "sweep" / ".submitit").stat().st_mode & 0o777 == 0o700
    # submitit's executor is itself again after the launch.
    import submitit
    assert submitit.AutoExecutor.__name__ == "AutoExecutor"


def test_slurm_launcher_cancels_its_array_on_ctrl_c(slurm_launcher, tmp_path, fake_slurm,
                                                    monkeypatch):
    launcher, _ = slurm_launcher
    launcher.fake_jobs = [FakeJob("7_0", tmp_path), FakeJob("7_1", tmp_path)]

    def interrupted(ids):
        raise KeyboardInterrupt

    monkeypatch.setattr(rnnjax.sweeps.slurm, "wait_for_tasks", interrupted)
    fake = fake_slurm([""])
    with pytest.raises(KeyboardInterrupt, match=r"^cancelled its SLURM array 7$"):
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    assert fake.calls == [["scancel", "7"]]


def _basic_launcher():
    from hydra.core.plugins import Plugins

    return Plugins.instance().class_name_to_class[
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher"]


@pytest.mark.e2e
def test_sweep_lists_jobs_whose_task_left_no_result_as_failed(app, monkeypatch):
    # A launcher that returns as rnnjax's SLURM launcher does: job 0's task was cancelled after
    # the job had finished (its directory counts), job 1's before it started.
    launcher = _basic_launcher()
    launch = launcher.launch

    def slurm_like(self, job_overrides, initial_job_idx):
        launch(self, job_overrides[:1], initial_job_idx)
        return [JobReturn(overrides=list(job_overrides[i]), status=JobStatus.FAILED,
                          _return_value=TaskEnded(f"7_{i}", state))
                for i, state in [(0, "CANCELLED"), (1, "UNKNOWN")]]

    monkeypatch.setattr(launcher, "launch", slurm_like)
    r = app("-m", "hydra.sweep.dir=sweep", "seed=0,1", *TINY)
    assert r.code == 1 and "Traceback" not in r.err and "Error executing job" not in r.err
    assert r.closing() == (
        f"rnnjax: sweep sweep: 2 jobs: 1 failed, 1 ok; failed: seed=1 {' '.join(TINY)} (SLURM "
        "task 7_1 ended UNKNOWN without a result (SLURM has no record of how it ended, as for a "
        "task cancelled before it started))")


def test_interrupted_sweep_says_what_the_launcher_did(app, tmp_path, monkeypatch):
    def interrupted(self, job_overrides, initial_job_idx):
        raise KeyboardInterrupt("cancelled its SLURM array 7")

    monkeypatch.setattr(_basic_launcher(), "launch", interrupted)
    r = app("-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "seed=0,1", *TINY)
    assert r.code == 130
    assert r.err.splitlines() == [
        f"rnnjax: sweep {tmp_path / 'sweep'} interrupted: 0 of 2 jobs finished; interrupted: none;"
        " 2 not started; cancelled its SLURM array 7; the same command resumes the sweep"]
