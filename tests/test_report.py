"""`rnnjax report` (rnnjax.report.build), in-process, on synthetic job directories (summary.json and
grad_norms.parquet written here; no JAX job runs): job counts of half-finished sweeps, a folder
of several sweeps, and writing the report whole or not at all (read-only --out, --out naming
a file, a full disk). Where only the files' fate matters the figures are stubbed (two small
ones); tests/test_plots.py checks the real figures on real jobs."""

import errno
import json
import os
import re
import tempfile

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import rnnjax.cli
from rnnjax.app.results import (
    SUMMARY,
    config_columns,
    file_record,
    with_config_columns,
    write_parquet,
)
from rnnjax.report import build as report


def finished(job, T: int = 8, seeds: int = 2, slope: float = -0.2):
    """A finished job directory that load_sweep reads: a tanh RNN's grad_norms.parquet whose
    norm falls by 10^slope per step back, and its summary.json (loss over all steps)."""
    job.mkdir(parents=True)
    (job / ".hydra").mkdir()
    config = {"cell": {"name": "vanilla"}, "activation": {"name": "tanh"},
              "init": {"name": "normal", "std": 0.01}, "task": {"name": "random"},
              "probe": {"loss_at": "all"}, "seq_len": T, "hidden_size": 4, "seeds": seeds}
    t = np.tile(np.arange(1, T + 1), seeds)
    df = pd.DataFrame({"seed": np.repeat(np.arange(seeds), T), "t": t, "T": T,
                       "grad_norm": 10.0 ** (slope * (T - t)), "train_step": 0})
    write_parquet(with_config_columns(df, config_columns(config)), job / "grad_norms.parquet")
    (job / SUMMARY).write_text(json.dumps({
        "status": "ok", "config": config, "wall_time_s": 1.0, "T": T,
        "provenance": {"code_version": "test"},
        "headline": {"log10_slope_per_step_back": slope, "n_underflow": 0},
        "files": {"grad_norms.parquet": file_record(job / "grad_norms.parquet")}}))


def failed(job):
    (job / ".hydra").mkdir(parents=True)
    (job / SUMMARY).write_text(json.dumps({"status": "failed", "config": {}, "error": "boom"}))


def interrupted(job, summary: str | None = None):
    """Started (Hydra's `.hydra/`) with no valid summary.json: killed, or still running."""
    (job / ".hydra").mkdir(parents=True)
    if summary is not None:
        (job / SUMMARY).write_text(summary)


def make_sweep(root, jobs: dict, listed: list[str] | None = None):
    """A sweep directory: multirun.yaml, each job of `jobs` ({dir: kind}) and, with `listed`,
    a sweep.json listing those job directories."""
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    for name, kind in jobs.items():
        {"finished": finished, "failed": failed,
         "interrupted": interrupted}[kind](root / name)
    if listed is not None:
        (root / "sweep.json").write_text(json.dumps({"jobs": [
            {"number": i + 1, "dir": d, "overrides": d.split(",")}
            for i, d in enumerate(listed)]}))
    return root


@pytest.fixture
def cli(capsys):
    """`rnnjax report ARGS` in-process: (exit code, stdout, stderr)."""
    def call(*argv):
        code = rnnjax.cli.main(["report", *map(str, argv)])
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.fixture
def seen(monkeypatch):
    """Stubs report.figures (one small figure); returns the job lists each call drew."""
    calls = []

    def figures(df, summaries, metrics):
        calls.append(sorted(summaries["job"]))
        return [("heatmap.png", "Heatmap", "caption", lambda: Figure(figsize=(1, 1))),
                ("decay_curves.png", "Decay", "caption", lambda: Figure(figsize=(1, 1)))]

    monkeypatch.setattr(report, "figures", figures)
    return calls


# ------------------------------------------------------------------------------ job counts

def test_job_counts_tell_finished_failed_interrupted_and_never_started(tmp_path):
    # A half-finished sweep's report said only "1 finished job(s)".
    names = ["a=1", "a=2", "a=3", "a=4", "a=5", "a=6", "a=7"]
    root = make_sweep(tmp_path / "s", {"a=1": "finished", "a=2": "failed",
                                       "a=3": "interrupted"}, listed=names)
    interrupted(root / "a=4", summary="{not json")  # killed while writing its summary
    (root / "a=5").mkdir()  # made, but Hydra never started the job: no .hydra/
    # a=6 and a=7: no directory at all
    assert report.job_counts(root) == {"finished": 1, "failed": 1, "interrupted": 2,
                                       "never_started": 3, "listed": 7}
    assert report.counts_text(report.job_counts(root)) == (
        "1 finished, 1 failed, 2 interrupted or still running, 3 never started (of 7 that "
        "sweep.json lists)")
    (root / "sweep.json").unlink()  # an older sweep: what never started is not known
    counts = report.job_counts(root)
    assert counts == {"finished": 1, "failed": 1, "interrupted": 2, "never_started": None,
                      "listed": None}
    assert report.counts_text(counts) == "1 finished, 1 failed, 2 interrupted or still running"


def test_job_counts_of_one_run_and_of_a_bad_sweep_json(tmp_path):
    finished(tmp_path / "run")
    assert report.job_counts(tmp_path / "run")["finished"] == 1
    root = make_sweep(tmp_path / "s", {"x": "finished"})
    for plan, key in (({"jobs": [{"dir": "x"}, {"dir": "../elsewhere"}]}, "`jobs[1].dir`"),
                      ({"jobs": "x"}, "`jobs`"), ("{", "cannot be read")):
        (root / "sweep.json").write_text(plan if isinstance(plan, str) else json.dumps(plan))
        match = f"sweep.json: .*{re.escape(key)}.*never started are not counted"
        with pytest.warns(UserWarning, match=match) as caught:
            assert report.job_counts(root)["never_started"] is None
        assert str(root / "sweep.json") in str(caught[0].message)


def test_report_of_a_half_finished_sweep_states_every_count(tmp_path, cli):
    root = make_sweep(tmp_path / "s", {"a=1": "finished", "a=2": "failed", "a=3": "interrupted"},
                      listed=["a=1", "a=2", "a=3", "a=4"])
    code, out, err = cli(root)
    counts = ("1 finished, 1 failed, 1 interrupted or still running, 1 never started (of 4 "
              "that sweep.json lists)")
    assert code == 0 and f"rnnjax report: jobs: {counts}\n" in out
    text = (root / "report.md").read_text()
    assert f"Jobs: {counts}" in text
    assert "skipped 1 failed job(s): a=2" in err and "skipped 1 unfinished job(s): a=3" in err
    for name in ("heatmap.png", "decay_curves.png"):  # real figures, whole
        assert (root / name).read_bytes().startswith(b"\x89PNG") and f"]({name})" in text
    # the slope table's caption says when the relative error is left empty
    assert "absolute difference: |measured − predicted| in decades per step" in text
    assert "left empty (—) where |predicted| < 0.01 decades per step" in text


def test_no_finished_job_is_one_line_with_the_counts(tmp_path, cli):
    root = make_sweep(tmp_path / "s", {"a=1": "failed", "a=2": "interrupted"},
                      listed=["a=1", "a=2", "a=3"])
    code, out, err = cli(root)
    assert (code, out) == (2, "")
    assert err == (f"rnnjax report: error: no finished job under {str(root)!r}: 0 finished, "
                   "1 failed, 1 interrupted or still running, 1 never started (of 3 that "
                   "sweep.json lists)\n")
    assert sorted(p.name for p in root.iterdir()) == ["a=1", "a=2", "multirun.yaml",
                                                      "sweep.json"]


# ------------------------------------------------------------------------- several sweeps

def test_a_folder_of_sweeps_gets_one_report_per_sweep(tmp_path, cli, seen):
    # `rnnjax report results/runs/multirun` drew 3 sweeps into one 3799×1798 figure.
    multirun = tmp_path / "multirun"
    make_sweep(multirun / "activation=tanh", {"seq_len=8": "finished"})
    make_sweep(multirun / "init.gain=0.5,2", {"init.gain=0.5": "finished",
                                              "init.gain=2": "finished", "init.gain=3": "failed"})
    code, out, err = cli(multirun)
    assert code == 0
    assert seen == [["seq_len=8"], ["init.gain=0.5", "init.gain=2"]]  # never mixed
    assert sorted(p.name for p in multirun.iterdir()) == ["activation=tanh", "init.gain=0.5,2"]
    lines = out.splitlines()
    assert lines[0] == f"rnnjax report: {multirun} holds 2 sweep(s): one report each, in the " \
                       "sweep's own directory"
    for sweep, jobs in (("activation=tanh", ["seq_len=8"]),
                        ("init.gain=0.5,2", ["init.gain=0.5", "init.gain=2"])):
        text = (multirun / sweep / "report.md").read_text()
        assert all(f"| {job} |" in text for job in jobs)
        assert f"rnnjax report: sweep {multirun / sweep}" in lines
        assert f"rnnjax report: wrote {multirun / sweep / 'report.md'}" in lines
    assert "| seq_len=8 |" not in (multirun / "init.gain=0.5,2" / "report.md").read_text()
    assert "rnnjax report: jobs: 2 finished, 1 failed, 0 interrupted or still running" in lines
    # with --out: each under its own name there
    code, out, _ = cli(multirun, "--out", tmp_path / "out")
    assert code == 0
    assert {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.md")
            } == {"activation=tanh/report.md", "init.gain=0.5,2/report.md"}


def test_sweeps_beside_other_jobs_are_one_line_naming_them(tmp_path, cli, seen):
    make_sweep(tmp_path / "multirun" / "s", {"a=1": "finished"})
    finished(tmp_path / "single" / "default")
    code, out, err = cli(tmp_path)
    assert (code, out, seen) == (2, "", [])
    assert err == (f"rnnjax report: error: {tmp_path} holds 1 sweep(s) (multirun/s) and 1 "
                   "job(s) outside them (single/default); name one sweep or run directory\n")


# --------------------------------------------------------------- whole files or none at all

def old_report(out):
    """An earlier report in `out`: its files and their contents."""
    out.mkdir(exist_ok=True)
    for name in ("heatmap.png", "report.md"):
        (out / name).write_text(f"old {name}")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def files_in(out):
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_read_only_out_is_one_line_and_writes_nothing(tmp_path, cli, seen,
                                                      monkeypatch):
    # An 18-line PermissionError traceback before.
    finished(tmp_path / "run")
    out = tmp_path / "ro"
    before = old_report(out)
    out.chmod(0o555)
    try:
        (out / "probe").touch()  # root writes anyway: deny it as the OS would
        (out / "probe").unlink()

        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    except PermissionError:
        pass
    try:
        code, stdout, err = cli(tmp_path / "run", "--out", out)
    finally:
        out.chmod(0o755)
    assert (code, stdout) == (1, "")
    assert err == f"rnnjax report: error: cannot write {out / 'heatmap.png'}: Permission denied\n"
    assert files_in(out) == before


def test_out_naming_a_file_is_one_line(tmp_path, cli, seen):
    finished(tmp_path / "run")
    (tmp_path / "file").write_text("keep")
    code, out, err = cli(tmp_path / "run", "--out", tmp_path / "file")
    assert (code, out, seen) == (2, "", [])
    assert err == f"rnnjax report: error: --out {tmp_path / 'file'} is not a directory\n"
    assert (tmp_path / "file").read_text() == "keep"
    code, _, err = cli(tmp_path / "run", "--out", tmp_path / "file" / "sub")
    assert code == 1
    assert err == (f"rnnjax report: error: cannot create directory {tmp_path / 'file' / 'sub'}: "
                   "Not a directory\n")


def test_a_full_disk_is_one_line_and_leaves_every_file_as_it_was(tmp_path, cli,
                                                                  seen, monkeypatch):
    finished(tmp_path / "run")
    out = tmp_path / "out"
    before = old_report(out)
    write = report._write_fd

    def full_on_the_second(fd, data):  # the disk fills halfway through decay_curves.png
        if full_on_the_second.calls:
            with os.fdopen(fd, "wb") as f:
                f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        full_on_the_second.calls += 1
        write(fd, data)

    full_on_the_second.calls = 0
    monkeypatch.setattr(report, "_write_fd", full_on_the_second)
    code, stdout, err = cli(tmp_path / "run", "--out", out)
    assert (code, stdout) == (1, "")
    assert err == (f"rnnjax report: error: cannot write {out / 'decay_curves.png'}: "
                   "No space left on device\n")
    assert files_in(out) == before  # heatmap.png not replaced, no temporary file left
    monkeypatch.setattr(report, "_write_fd", write)  # the disk has room again
    assert cli(tmp_path / "run", "--out", out)[0] == 0
    assert sorted(files_in(out)) == ["decay_curves.png", "heatmap.png", "report.md"]
    assert (out / "heatmap.png").read_bytes().startswith(b"\x89PNG")
    assert oct((out / "report.md").stat().st_mode & 0o777) == oct(0o666 & ~report._UMASK)


# ------------------------------------------------------------- reads files only, starts fast

def theory_job(job, gain: float, slope: float):
    """A finished tanh job with its loss at the last step and its theory in summary.json (mean
    field at `gain`, a Lyapunov exponent): the phase diagram and the slope-Lyapunov figure
    draw it."""
    finished(job, slope=slope)
    summary = json.loads((job / SUMMARY).read_text())
    summary["config"]["probe"]["loss_at"] = "last"
    summary["headline"]["theory"] = {
        "applies": True, "lyapunov_top_log10_per_step": slope,
        "mean_field": {"gain": gain, "input_var": 0.1, "bias_var": 0.0,
                       "log10_factor_per_step": slope}}
    summary.update(cell_label="", model_label="tanh", cell_order=0.0, activation_order=0,
                   init_order=0, cell_takes_activation=True, cell_takes_init=True)
    (job / SUMMARY).write_text(json.dumps(summary))


START_S = 2.0  # `rnnjax report` starts (its command module loaded) within this


@pytest.mark.e2e
def test_report_reads_files_only_and_starts_fast(tmp_path):
    """`rnnjax report` in a fresh process on a finished sweep, every figure drawn that its jobs
    allow (heatmap, decay curves, phase diagram, slope against Lyapunov): no JAX, Hydra or
    OmegaConf is loaded, and a fresh process loads the command's module within START_S of CPU
    time (the best of up to three: the report's own process, measured right after the import,
    then fresh ones that only import it while none was within START_S)."""
    import resource
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    theory_job(sweep / "a", gain=0.5, slope=-0.3)
    theory_job(sweep / "b", gain=2.0, slope=0.1)
    script = (
        "import json, resource, sys, time\n"
        "t0 = time.perf_counter()\n"
        "import rnnjax.cli, rnnjax.report.build\n"
        "started = time.perf_counter() - t0\n"
        "ru = resource.getrusage(resource.RUSAGE_SELF)\n"
        "cpu = ru.ru_utime + ru.ru_stime\n"
        f"code = rnnjax.cli.main(['report', {str(sweep)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
        "loaded = [m for m in ('jax', 'hydra', 'omegaconf') if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'loaded': loaded, 'started': started, 'cpu': cpu}))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=False, timeout=120)
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["code"] == 0 and result["loaded"] == [], run.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["decay_curves.png", "heatmap.png", "phase_diagram.png", "report.md",
                       "slope_vs_lyapunov.png"]
    # a fresh interpreter that loads the command: its CPU time (what the machine's other work
    # does not stretch, as it stretches the wall time), the best of up to three. The report's
    # process above is the first (its CPU time up to the end of the import: the interpreter's
    # start and the module's load); more fresh processes that only import it run while none
    # was within START_S, so a slow start fails only when it is slow three times.
    cpu = [result["cpu"]]
    while min(cpu) >= START_S and len(cpu) < 3:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", "import rnnjax.cli, rnnjax.report.build"],
                       check=True, timeout=60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    print(f"rnnjax report: module loaded in {result['started']:.2f} s wall; a fresh process "
          f"{min(cpu):.2f} s CPU (best of {len(cpu)})")
    assert min(cpu) < START_S
