"""rnnjax.cli beyond dispatching (that is test_cli.py): each command's --help, a reader of stdout
that goes away (`rnnjax --help | head -c 10`) ends a command quietly, and the check of an output
path that the commands run before any work."""

import logging
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import ROOT, exit_code_of

import rnnjax.app.results
import rnnjax.cli
from rnnjax.cli import COMMANDS, Command

BROKEN_PIPE = 141  # rnnjax.cli.BROKEN_PIPE: 128 + SIGPIPE, as a shell reports it


# ---------------------------------------------------------------- --help

def help_entries(text: str) -> dict[str, str]:
    """Each option's entry in an argparse --help ("--out": its help, on one line)."""
    entries, current = {}, None
    for line in text.splitlines():
        start = re.match(r"  (-[-\w]+)", line)
        if start:
            current = start.group(1)
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line
        else:
            current = None
    return {option: " ".join(entry.split()) for option, entry in entries.items()}


@pytest.mark.parametrize("name", ["bench", "bench-train", "reproduce"])
def test_every_help_line_states_its_default_once(name, capsys):
    # `rnnjax bench --help` said "(default 5, at most 3 from T=4096; --quick: 2) (default:
    # None)": argparse's defaults beside the written ones.
    assert exit_code_of(rnnjax.cli.main, [name, "--help"]) == 0
    entries = help_entries(capsys.readouterr().out)
    assert "--out" in entries and len(entries) >= 3
    for entry in entries.values():
        assert len(re.findall(r"\bdefault\b", entry)) <= 1, entry
        assert "None" not in entry and "False" not in entry, entry


def test_the_defaults_help_states_are_the_real_ones(capsys):
    from rnnjax.bench import probe as bench

    exit_code_of(rnnjax.cli.main, ["bench", "--help"])
    entries = help_entries(capsys.readouterr().out)
    assert "(default: 16 256 1024 4096; --quick: 4 16)" in entries["--T"]
    assert f"(default: {bench.FULL['repeats']}; --quick: {bench.QUICK['repeats']})" in (
        entries["--repeats"])
    assert "(default: 1024)" in entries["--loop-max-t"]
    assert "(default: 1 2 4 8 16; --quick: 1 2)" in entries["--unrolls"]
    assert "(default: a new file under results/runs/bench/" in entries["--out"]
    exit_code_of(rnnjax.cli.main, ["bench-train", "--help"])
    entries = help_entries(capsys.readouterr().out)
    for option, default in [("--epochs", "100"), ("--repeats", "1"), ("--torch-threads", "1 2"),
                            ("--torch-models", "scratch rnn"), ("--rnnjax-seeds", "1 3")]:
        assert f"(default: {default})" in entries[option], option
    assert "(default: $RNNJAX_DATA/timemachine.txt, else" in entries["--data"]


# ---------------------------------------------------------------- a reader that went away

@pytest.fixture(params=["line-buffered", "block-buffered"])
def closed_stdout(request):
    """A pipe whose reader has gone away (`| head` after its last line), opened as a terminal's
    stdout is (each line written at once: the command's own print fails) or as a pipe's (the
    output waits in the buffer: the flush after `main` fails)."""
    read, write = os.pipe()
    os.close(read)
    stdout = open(write, "w", buffering=1 if request.param == "line-buffered" else -1)  # noqa: SIM115
    yield stdout
    try:
        stdout.close()
    except BrokenPipeError:  # the old code left its output buffered: not this test's concern
        pass


def ends_quietly(closed_stdout, capsys, argv) -> int:
    """Runs `rnnjax ARGV` with the closed pipe as stdout; asserts that nothing went to stderr and
    that the interpreter's final flush of stdout, after `main` returns, cannot raise; returns
    the exit code. (sys.stdout is set here, in the test's call: pytest's capture would replace
    it if a fixture set it.)"""
    captured = sys.stdout
    sys.stdout = closed_stdout
    try:
        code = exit_code_of(rnnjax.cli.main, argv)
        closed_stdout.flush()  # what the interpreter does at exit: raised BrokenPipeError before
    finally:
        sys.stdout = captured
    assert capsys.readouterr().err == ""
    return code


def test_help_into_a_closed_pipe_ends_quietly(closed_stdout, capsys):
    # `rnnjax --help | head -c 10`: a BrokenPipeError traceback and exit 1, 3 times in 6.
    assert ends_quietly(closed_stdout, capsys, ["--help"]) == BROKEN_PIPE


@pytest.mark.parametrize("name", ["run", "report", "reproduce", "bench", "bench-train"])
@pytest.mark.e2e
def test_every_commands_help_into_a_closed_pipe_ends_quietly(name, closed_stdout, capsys,
                                                             tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absl = sys.modules.get("absl.logging")
    if absl is not None:  # Hydra's logging setup would close pytest's stream (see test_sweep)
        monkeypatch.setattr(absl.get_absl_handler().python_handler, "stream", sys.__stderr__)
    assert ends_quietly(closed_stdout, capsys, [name, "--help"]) in (0, BROKEN_PIPE)


def test_log_lines_into_a_closed_pipe_are_dropped_and_the_command_goes_on(
        closed_stdout, capsys, tmp_path, monkeypatch):
    # Hydra's job log goes to stdout: `rnnjax run | head -1` printed "--- Logging error ---"
    # and a 20-line traceback per log record.
    def main(argv):
        log = logging.getLogger("rnnjax.test_commands")
        handler = logging.StreamHandler(sys.stdout)  # as Hydra's job logging: ext://sys.stdout
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            for step in range(3):
                log.info("step %d of 3: %s", step + 1, "x" * 10_000)  # past the pipe's buffer
        finally:
            log.removeHandler(handler)
        (tmp_path / "done").write_text("the job went on")
        return 0

    module = types.ModuleType("fake_command")
    module.main = main
    monkeypatch.setitem(sys.modules, "fake_command", module)
    monkeypatch.setitem(COMMANDS, "fake", Command("fake_command", "", "a job that logs"))
    assert ends_quietly(closed_stdout, capsys, ["fake"]) == 0
    assert (tmp_path / "done").read_text() == "the job went on"


def test_other_logging_errors_are_still_reported(capsys, monkeypatch):
    def main(argv):
        log = logging.getLogger("rnnjax.test_commands.bad")
        handler = logging.StreamHandler(sys.stderr)
        log.addHandler(handler)
        log.propagate = False  # pytest's own handler raises the error instead of reporting it
        try:
            log.error("%d", "not a number")
        finally:
            log.removeHandler(handler)
            log.propagate = True
        return 0

    module = types.ModuleType("fake_command")
    module.main = main
    monkeypatch.setitem(sys.modules, "fake_command", module)
    monkeypatch.setitem(COMMANDS, "fake", Command("fake_command", "", "a bad log call"))
    assert exit_code_of(rnnjax.cli.main, ["fake"]) == 0
    assert "--- Logging error ---" in capsys.readouterr().err


def test_help_into_a_closed_pipe_ends_quietly_at_interpreter_exit():
    """The installed command's whole life, flush at exit included (the failure was
    intermittent: the reader here is gone before the first write, every time)."""
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-m", "rnnjax", "--help"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.close()
        err = p.stderr.read()
        p.stderr.close()
        assert (p.wait(timeout=60), err) == (BROKEN_PIPE, b"")


# ---------------------------------------------------------------- unwritable

def test_unwritable_names_what_is_wrong(tmp_path, monkeypatch):
    from rnnjax.app.results import unwritable

    file = tmp_path / "a_file"
    file.write_text("x")
    assert unwritable(tmp_path / "new" / "deeper" / "out.json") is None
    assert unwritable(tmp_path / "new" / "deeper", directory=True) is None
    assert unwritable(tmp_path, directory=False) == "is a directory, not a file"
    assert unwritable(file, directory=True) == "is a file, not a directory"
    assert unwritable(file / "out.json") == f"{file} is a file, not a directory"
    assert unwritable(file / "sub", directory=True) == f"{file} is a file, not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing left behind

    monkeypatch.setattr(rnnjax.app.results.tempfile, "TemporaryFile", refused)
    assert unwritable(tmp_path / "new" / "out.json") == (
        f"cannot write in {tmp_path} (Permission denied)")


def test_unwritable_read_only_folder(tmp_path, monkeypatch):
    from rnnjax.app.results import unwritable

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if writes_anyway(folder):  # root: the mode does not stop it, so a refusal is faked
            monkeypatch.setattr(rnnjax.app.results.tempfile, "TemporaryFile", refused)
        assert unwritable(folder / "out.json") == f"cannot write in {folder} (Permission denied)"
        assert unwritable(folder / "sub", directory=True) == (
            f"cannot write in {folder} (Permission denied)")
    finally:
        folder.chmod(0o755)
    assert list(folder.iterdir()) == []


def writes_anyway(folder: Path) -> bool:
    """Whether this process can write in `folder` whatever its mode says (root can)."""
    try:
        (folder / "probe").write_text("")
    except PermissionError:
        return False
    (folder / "probe").unlink()
    return True


def refused(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
