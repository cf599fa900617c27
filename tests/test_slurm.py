"""Sweeps through the `slurm` launcher preset on a real SLURM cluster (as root:
`scripts/slurm_cluster.sh start`; the tests skip where no cluster answers), and the check that
refuses a request the partition can never run (also without a cluster, on sinfo's text)."""

import datetime
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import yaml
from conftest import ROOT
from test_cli import RUN, run

from rnnjax.config import register_configs
from rnnjax.slurm import (
    Partition,
    parse_sinfo,
    request,
    submitted_tasks,
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
    if not re.search(r"^(idle|mixed|allocated|completing)", nodes.stdout, re.MULTILINE):
        return f"no node is up (sinfo: {' '.join(nodes.stdout.split()) or 'no nodes'})"
    if acct.returncode != 0:
        return f"no accounting (sacct: {acct.stderr.strip()})"
    return None


@pytest.fixture(scope="module")
def cluster():
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
    """The array tasks submitit submitted for a sweep (`.submitit/ARRAY_TASK/` folders)."""
    folder = sweep / ".submitit"
    return {d.name for d in folder.iterdir() if re.fullmatch(r"\d+_\d+", d.name)} \
        if folder.is_dir() else set()


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


@pytest.mark.xfail(strict=False, reason="the sweep still submits a SLURM task for every "
                   "finished job, which then skips it")
def test_rerun_skips_finished_jobs_without_submitting_a_task(finished_sweep, jax_cache):
    cwd, sweep = finished_sweep["cwd"], finished_sweep["sweep"]
    p = run(finished_sweep["args"], cwd, jax_cache)
    assert "2 jobs: 2 ok (2 skipped" in closing_line(p.stderr)
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


@pytest.mark.xfail(strict=False, reason="a cancelled array task ends the sweep with submitit's "
                   "UncompletedJobError traceback, possibly while other tasks still run, and "
                   "the re-run submits a task for every job")
def test_cancelled_task_is_reported_and_only_it_runs_again(cluster, tmp_path, jax_cache):
    sweep = tmp_path / "sweep"
    # One quick job and one that trains for several seconds, which is cancelled mid-run.
    args = ["-m", *CPU_NODE, f"hydra.sweep.dir={sweep}", "train.steps=0,20000",
            "train.log_every=5000", *SMALL]
    since = _now()
    proc = subprocess.Popen(RUN + args, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_COMPILATION_CACHE_DIR": jax_cache})
    try:
        # map_array submits the jobs in order: task 1 is train.steps=20000.
        slow = _wait_running(tmp_path, 1)
        subprocess.run(["scancel", slow], check=True, timeout=30)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    # When the command returns, every job is accounted for: the quick one finished, the
    # cancelled one is listed as failed with its overrides, in one line, without a traceback.
    jobs = job_dirs(sweep)
    quick = next(d for o, d in jobs.items() if "train.steps=0" in o.split())
    assert status(quick) == "ok"
    first = settled(tmp_path, since, submitted(sweep), timeout=10)
    assert len(first) == 2 and all(s in FINAL for s in first.values()), first
    assert first[slow] == "CANCELLED"
    assert proc.returncode == 1
    assert "Traceback" not in err
    line = closing_line(err)
    assert "1 failed" in line and "1 ok" in line
    assert "train.steps=20000" in line.split("failed:", 1)[1]

    # The re-run submits one task, for the cancelled job only, and it finishes.
    p = run(args, tmp_path, jax_cache)
    new = submitted(sweep) - set(first)
    assert len(new) == 1, new
    now = settled(tmp_path, since, new)
    assert {j: s for j, s in now.items() if j not in first} == {next(iter(new)): "COMPLETED"}
    jobs = job_dirs(sweep)
    assert all(status(d) == "ok" for d in jobs.values())
    redone = next(d for o, d in jobs.items() if "train.steps=20000" in o.split())
    assert slurm_id(redone) == next(iter(new))
    assert slurm_id(quick) in first
    assert "2 jobs: 2 ok (1 skipped" in closing_line(p.stderr)


def _offers():
    """(CPUs, memory in MB, GPUs) of the default partition's largest node, from sinfo."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    rows = [r.split("|") for r in out.splitlines() if r.split("|")[0].endswith("*")]
    return (max(int(r[1]) for r in rows), max(int(r[2]) for r in rows),
            sum(1 for r in rows if "gpu" in r[3]))


def test_unsatisfiable_request_fails_with_one_line_and_submits_nothing(
        cluster, tmp_path, jax_cache):
    # The preset's defaults on a CPU-only partition: sbatch would reject the GPU request.
    cpus, mem_mb, gpus = _offers()
    if gpus:
        pytest.skip("the default partition has GPUs: the preset's defaults may fit")
    since = _now()
    p = run(["-m", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}",
             "activation=tanh,relu", *SMALL], tmp_path, jax_cache, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnjax: error: "), p.stderr
    assert "hydra.launcher.gpus_per_node=1" in lines[0]
    assert f"at most {cpus} CPUs, {gpus} GPUs and {mem_mb / 1024:.1f} GB" in lines[0]
    assert not (tmp_path / "sweep").exists()
    assert tasks(tmp_path, since) == {} and submitted(tmp_path / "sweep") == set()


def launcher_config(overrides):
    """The composed `hydra.launcher` config of the app with these overrides."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True).hydra.launcher


def test_cpu_request_beyond_every_node_is_refused(cluster):
    # sbatch would accept it and the job would pend forever (Reason=PartitionConfig).
    cpus, mem_mb, gpus = _offers()
    over = [*CPU_NODE, f"hydra.launcher.cpus_per_task={cpus + 1}"]
    message = unsatisfiable(launcher_config(over))
    assert message is not None and message.startswith(
        f"hydra.launcher.cpus_per_task={cpus + 1}: more than any node offers"), message
    assert unsatisfiable(launcher_config(CPU_NODE)) is None


def test_wait_for_tasks_waits_for_every_task_and_says_how_it_ended(cluster, tmp_path):
    # One task at a time (%1): task 0 is cancelled while it runs, task 2 while it is still
    # pending in the array, which leaves no accounting record (submitit then waits forever).
    out = subprocess.run(["sbatch", "--parsable", "--array=0-2%1", "--mem=100M",
                          f"--output={tmp_path}/%A_%a.out", "--wrap", "sleep 3"], cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=30)
    ids = [f"{out.stdout.strip().split(';')[0]}_{i}" for i in range(3)]
    assert _wait_running(tmp_path, 0) == ids[0]
    subprocess.run(["scancel", ids[0], ids[2]], check=True, timeout=30)
    assert wait_for_tasks(ids, poll_s=0.5, accounting_s=3) == {
        ids[0]: "CANCELLED", ids[1]: "COMPLETED", ids[2]: "UNKNOWN"}
    queue = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True,
                           timeout=30).stdout.split()
    assert not set(ids) & set(queue)


def test_submitted_tasks_lists_a_launch_in_array_order(tmp_path):
    folder = tmp_path / ".submitit"
    for name in ["7", "7_0", "7_1", "9", "9_10", "9_2", "9_0", "notes"]:
        (folder / name).mkdir(parents=True)
    assert submitted_tasks(folder) == ["7_0", "7_1", "9_0", "9_2", "9_10"]
    assert submitted_tasks(folder, before=["7", "7_0", "7_1"]) == ["9_0", "9_2", "9_10"]
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
    from rnnjax.slurm import check_request

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

