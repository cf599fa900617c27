"""reproduce.py on two tiny figures (one drawn from the other's jobs), in-process with its worker
process: the figures, their sections and REPORT.md under ./results by default; a second run
skips every finished job and leaves its files alone; a new job runs alone; `--out DIR`; a bad
override or --out is one line and writes nothing; a line comes before each long phase; the
report names the installed command."""

import logging
import os
import shutil

import pytest

import rnnjax.app.results
import rnnjax.cli
from rnnjax import cli, load_summaries
from rnnjax.app.validate import ConfigError
from rnnjax.core.tasks import DataError
from rnnjax.report import frames, plots, reproduce
from rnnjax.report.figures import Figure

SMALL = ["hidden_size=8", "seq_len=12", "seeds=2", "batch_size=4", "probe.loss_at=last"]


def tiny(extra_jobs: list[list[str]] = ()) -> dict[str, Figure]:
    return {
        "tiny_a": Figure(common=SMALL, jobs=[["activation=tanh"], ["activation=relu"],
                                             *extra_jobs],
                         draw=lambda d: plots.decay_curves(d.df, d.summaries),
                         caption="Two tiny jobs."),
        "tiny_b": Figure(sources=("tiny_a",), draw=lambda d: plots.slope_vs_lyapunov(
            d.summaries), caption="Drawn from tiny_a's jobs."),
    }


def run(monkeypatch, caplog, figures, *argv) -> tuple[int, list[str]]:
    monkeypatch.setattr(reproduce, "FIGURES", figures)
    monkeypatch.setattr(reproduce, "DEFAULT_WORKERS", 1)  # tiny jobs: one worker starts faster
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reproduce"):
        code = reproduce.main(list(argv))
    return code, [r.getMessage() for r in caplog.records if r.name == "reproduce"]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """The first run, from a fresh directory without --out: (that directory, exit code, log
    lines)."""
    where = tmp_path_factory.mktemp("repro")
    mp, caplog_records = pytest.MonkeyPatch(), []
    handler = logging.Handler()
    handler.emit = caplog_records.append
    logging.getLogger("reproduce").addHandler(handler)
    try:
        mp.chdir(where)
        mp.setenv("XDG_CACHE_HOME", str(where / "cache"))
        mp.setattr(reproduce, "FIGURES", tiny())
        mp.setattr(reproduce, "DEFAULT_WORKERS", 1)
        code = reproduce.main(["--only", "tiny_b"])  # tiny_a's jobs run as its source
    finally:
        logging.getLogger("reproduce").removeHandler(handler)
        mp.undo()
    return where / "results", code, [r.getMessage() for r in caplog_records]


@pytest.mark.e2e
def test_first_run_writes_figures_sections_and_report_under_results(first):
    out, code, lines = first
    assert code == 0
    for name in ("tiny_a", "tiny_b"):
        png = (out / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        assert f"![{name}](figures/{name}.png)" in (out / "REPORT.md").read_text()
    jobs = sorted(p.name for p in (out / "runs" / "reproduce" / "tiny_a").iterdir()
                  if p.is_dir())
    assert jobs == ["activation=relu", "activation=tanh"]  # named by their own overrides
    assert any(line.startswith("job 1 of 2 (tiny_a/activation=tanh): ok in") for line in lines)
    assert any(line.startswith("job 2 of 2 (tiny_a/activation=relu): ok in") for line in lines)
    # the section's table holds each job's measured slope as its summary.json says
    summaries = load_summaries(out / "runs" / "reproduce" / "tiny_a").set_index("job")
    section = (out / "figures" / "tiny_a.md").read_text()
    for job, slope in summaries[frames.SLOPE].items():
        assert f"| tiny_a/{job} |" in section and f"| {slope:.4g} |" in section
    assert "2 of its 2 jobs ran (0 finished earlier" in (out / "REPORT.md").read_text()


@pytest.mark.e2e
def test_second_run_skips_every_finished_job(first, monkeypatch, caplog):
    out, _, _ = first
    summaries = sorted((out / "runs" / "reproduce").rglob("summary.json"))
    before = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in summaries}
    log_size = (out / "runs" / "reproduce" / "workers.log").stat().st_size
    # a finished job of a former job list: left alone, and out of the figures
    runs = out / "runs" / "reproduce" / "tiny_a"
    shutil.copytree(runs / "activation=tanh", runs / "activation=stale")
    code, lines = run(monkeypatch, caplog, tiny(), "--out", str(out))
    assert code == 0
    assert [line for line in lines if line.startswith("job ")] == [
        "job 1 of 2 (tiny_a/activation=tanh): skipped, finished earlier",
        "job 2 of 2 (tiny_a/activation=relu): skipped, finished earlier"]
    assert {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in summaries} == before
    assert (out / "runs" / "reproduce" / "workers.log").stat().st_size == log_size  # no worker
    assert (out / "figures" / "tiny_b.png").is_file()
    assert "stale" not in (out / "figures" / "tiny_a.md").read_text()
    assert "0 of its 2 jobs ran (2 finished earlier and were reused)" in (
        out / "REPORT.md").read_text()


@pytest.mark.e2e
@pytest.mark.slow
def test_a_new_job_runs_alone(first, monkeypatch, caplog):
    out, _, _ = first
    # a job running longer than this gets a line while it runs (the worker's start-up alone
    # takes longer): silence for as long as a job ran before
    monkeypatch.setattr(reproduce, "HEARTBEAT_S", 0.2)
    # its init values as a list: one job, one row per value
    new = ["activation=sigmoid", "init=gaussian", "init.gain=[0.5,2.0]"]
    code, lines = run(monkeypatch, caplog, tiny([new]), "--out", str(out), "--only", "tiny_a")
    assert code == 0
    jobs = [line for line in lines if line.startswith("job ")]
    assert jobs[:2] == ["job 1 of 3 (tiny_a/activation=tanh): skipped, finished earlier",
                        "job 2 of 3 (tiny_a/activation=relu): skipped, finished earlier"]
    name = f"job 3 of 3 (tiny_a/{reproduce.job_name(new)})"
    assert jobs[2].startswith(f"{name}: running, ") and jobs[-1].startswith(f"{name}: ok in")
    assert all(line.startswith(f"{name}: running, ") for line in jobs[2:-1])
    section = (out / "figures" / "tiny_a.md").read_text()
    for value in ("0.5", "2"):
        assert f"{reproduce.job_name(new)}[init.gain={value}] | sigmoid / gaussian g={value}" in (
            section)


def test_a_bad_override_is_one_line_and_writes_nothing(tmp_path, monkeypatch, caplog, capsys):
    bad = {"tiny_a": Figure(common=SMALL, jobs=[["seq_len=0"]], draw=lambda d: None,
                            caption="")}
    code, _ = run(monkeypatch, caplog, bad, "--out", str(tmp_path / "out"))
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seq_len=0 is invalid" in err
    assert not (tmp_path / "out").exists()


def test_its_error_line_begins_with_the_name_it_was_called_by(tmp_path, monkeypatch, capsys):
    # `rnnjax reproduce` said "reproduce: error: ..." (offline, without the text).
    def offline(names, out, workers):
        raise DataError("task=timemachine: cannot download it")

    monkeypatch.setattr(reproduce, "run", offline)
    assert cli.main(["reproduce", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "rnnjax reproduce: error: task=timemachine: cannot download it\n")


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "reproduce"]


def test_it_says_what_it_does_before_each_long_phase(tmp_path, monkeypatch, caplog):
    # `rnnjax reproduce` was silent for 38 s (its imports, then Hydra composing and validating
    # 86 jobs) before its first line.
    monkeypatch.setattr(reproduce, "PROGRESS_S", 0.0)  # a progress line after every job
    plan, seen = reproduce.plan, []

    def planning(names, out, *progress):
        seen.append(messages(caplog))
        plan(names, out, *progress)
        seen.append(messages(caplog))
        raise ConfigError("stop here")  # nothing runs

    monkeypatch.setattr(reproduce, "plan", planning)
    out = tmp_path / "out"
    code, _ = run(monkeypatch, caplog, tiny(), "--out", str(out))
    assert code == 2 and not out.exists()
    before, after = seen
    assert before == [
        f"reproducing every figure: 2 figures, 2 jobs, into {out} (figures/, REPORT.md; the "
        "jobs in runs/reproduce/)",
        "planning: composing and validating 2 job configs with Hydra ..."]
    assert after[2:] == ["planning: 1 of 2 jobs composed and validated",
                         "planning: 2 of 2 jobs composed and validated"]


@pytest.mark.e2e
def test_the_first_run_said_what_it_did_in_order(first):
    _, _, lines = first
    assert lines[0].startswith("reproducing tiny_a, tiny_b: 2 figures, 2 jobs, into results ")
    order = ["planning: composing", "2 jobs: 0 finished earlier, 2 to run",
             "starting 1 worker process (each imports JAX", "job 1 of 2 (tiny_a/activation=tanh)",
             "tiny_a: drawing", "tiny_a drawn", "tiny_b: drawing", "tiny_b drawn"]
    at = [next(i for i, line in enumerate(lines) if line.startswith(s)) for s in order]
    assert at == sorted(at)


@pytest.mark.e2e
def test_the_report_tells_its_reader_the_installed_command(first):
    # REPORT.md told a pip-installed user to run `python experiments/reproduce.py`.
    out, _, _ = first
    report = (out / "REPORT.md").read_text()
    assert "Regenerate everything with `rnnjax reproduce` (one figure: `--only NAME`" in report
    assert "Made by `rnnjax reproduce --only tiny_a`." in report
    assert "experiments/" not in report and "python " not in report


@pytest.mark.parametrize("where", ["a file", "below a file", "read-only"])
def test_an_out_that_cannot_be_written_is_one_line_before_any_job(where, tmp_path, monkeypatch,
                                                                    caplog, capsys):
    # `--out <read-only folder>` was a 40-line traceback, `--out <a file>` a 34-line one.
    def plan(*args, **kwargs):
        raise AssertionError("planned jobs for an --out it cannot write")

    monkeypatch.setattr(reproduce, "plan", plan)
    (tmp_path / "file").write_text("")
    (tmp_path / "ro").mkdir()
    out, says = {"a file": (tmp_path / "file", "is a file, not a directory"),
                 "below a file": (tmp_path / "file" / "results",
                                  f"{tmp_path / 'file'} is a file, not a directory"),
                 "read-only": (tmp_path / "ro", f"cannot write in {tmp_path / 'ro'} "
                                                "(Permission denied)")}[where]
    (tmp_path / "ro").chmod(0o555)
    if os.access(tmp_path / "ro", os.W_OK):  # root writes anyway: the refusal is faked
        def refused(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(rnnjax.app.results.tempfile, "TemporaryFile", refused)
    try:
        code, lines = run(monkeypatch, caplog, tiny(), "--out", str(out))
    finally:
        (tmp_path / "ro").chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and lines == [] and err.count("\n") == 1
    assert err.endswith(f"error: --out {out}: {says}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"]
    assert (tmp_path / "file").read_text() == "" and list((tmp_path / "ro").iterdir()) == []


def test_a_figure_none_of_whose_jobs_finished_is_not_drawn(tmp_path, monkeypatch, caplog):
    # When every job of a figure failed, drawing it ended the reproduction in a traceback
    # ("ValueError: No objects to concatenate") instead of the report and exit code 1.
    monkeypatch.setattr(reproduce, "FIGURES", tiny())
    with caplog.at_level(logging.WARNING, logger="reproduce"):
        assert reproduce.write_section("tiny_b", tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    assert "tiny_a/activation=tanh did not finish: left out of the figure" in messages(caplog)


def test_the_published_figures_are_data_and_read_as_published():
    """conf/figures.yaml holds every figure: its jobs, how it is drawn and its text. Read back,
    the text is what results/REPORT.md and each section say (those change only by `rnnjax
    reproduce`), and each figure's draw names a function of plots that takes its inputs."""
    import inspect
    from pathlib import Path

    from rnnjax.report import figures

    results = Path(__file__).resolve().parents[1] / "results"
    report = (results / "REPORT.md").read_text()
    head = "\n".join(figures.report_head(reproduce.COMMAND, ""))
    assert report.startswith(head.rstrip("\n"))
    spec = figures.published()["figures"]
    assert list(reproduce.FIGURES) == list(spec) and len(spec) == 13
    for name, fig in reproduce.FIGURES.items():
        section = (results / "figures" / f"{name}.md").read_text()
        assert f"## {name}\n" in report and fig.caption + "\n" in section
        kind = spec[name].get("tables", "slopes")
        for heading in figures.published()["tables"][kind]:
            assert heading.format(start=frames.CURSE_FROM) + ":\n" in section, (name, heading)
        draw = getattr(plots, spec[name]["draw"]["plot"])
        takes = inspect.signature(draw).parameters
        assert set(spec[name]["draw"]["inputs"]) | set(spec[name]["draw"].get("args", {})) <= set(
            takes), name
        assert all(0 <= i < len(fig.jobs) for i in [*fig.names, *fig.table_only]), name
        assert set(fig.sources) < set(reproduce.FIGURES), name


def test_a_bad_figure_entry_is_one_line():
    from rnnjax.report import figures

    good = {"draw": {"plot": "heatmap", "inputs": ["df"]}, "caption": "x"}
    assert figures.figure("ok", {**good, "grid": {"seq_len": [8, 16]}}).jobs == [
        ["seq_len=8"], ["seq_len=16"]]
    for bad, why in (({**good, "draw": {}}, "needs draw.plot"),
                     ({**good, "tables": "nope"}, "tables must be one of slopes, falls"),
                     ({**good, "colour": 1}, "has unknown keys ['colour']"),
                     ({**good, "draw": {"plot": "heatmap", "inputs": ["cfg"]}},
                      "draw.inputs may name df, summaries, metrics, names")):
        with pytest.raises(ValueError, match="^figures.yaml: figure bad ") as e:
            figures.figure("bad", bad)
        assert why in str(e.value) and "\n" not in str(e.value)
