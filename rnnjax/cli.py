"""The `rnnjax` command (also `python -m rnnjax`): one program, a subcommand per tool.

    rnnjax run [-m] [KEY=VALUE ...]     one job or a sweep (Hydra's app, as experiments/run.py)
    rnnjax report PATH [--out DIR]      figures and report.md of a run or sweep
    rnnjax reproduce [--only NAME]      every published figure and results/REPORT.md
    rnnjax bench [...]                  probe speed and memory against PyTorch and a JAX loop
    rnnjax bench-train [...]            training speed against PyTorch
    rnnjax docs [--build]               serve the documentation site (--build: build it)

Each subcommand is the `main(argv)` of its module, imported only when it is chosen, so that
`rnnjax --help` starts no JAX. The scripts in experiments/ call the same functions.

A reader that goes away (`rnnjax --help | head -c 10`) ends the command quietly, exit code 141
as a shell reports SIGPIPE: output printed to the closed pipe stops the command, log lines
written there (Hydra's job log) are dropped and the command goes on.
"""

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple, TextIO

from rnnjax.app.interrupt import INTERRUPTED, catching_ctrl_c, held
from rnnjax.bench.common import RUNS, default_out, output_file  # noqa: F401 (experiments/)

PROG = "rnnjax"
BROKEN_PIPE = 141  # the exit code of a writer whose reader went away, as a shell reports SIGPIPE


class Command(NamedTuple):
    """A subcommand: the module whose `main(argv)` runs it, and one line for `rnnjax --help`."""

    module: str
    usage: str  # the arguments, as the help lists them
    summary: str


COMMANDS = {
    "run": Command("rnnjax.sweeps.app", "[-m] [KEY=VALUE ...]",
                   "one job, or a sweep with -m (--help lists every key)"),
    "report": Command("rnnjax.report.build", "PATH [--out DIR]",
                      "figures and report.md of a run or sweep directory"),
    "reproduce": Command("rnnjax.report.reproduce", "[--only NAME]",
                         "every published figure and results/REPORT.md, under ./results"),
    "bench": Command("rnnjax.bench.probe", "[--quick] [...]",
                     "probe speed, compile time and memory against PyTorch and a JAX loop"),
    "bench-train": Command("rnnjax.bench.train", "[--epochs N] [...]",
                           "training speed of d2l's RNN language model against PyTorch"),
    "docs": Command("rnnjax.report.docs", "[--build]",
                    "serve the documentation site locally (--build: build it strictly)"),
}
EXAMPLES = """\
examples:
  rnnjax run                                        the default job: tanh, T=64, 4 seeds
  rnnjax run -m activation=tanh,sigmoid,relu seq_len=64,256
  rnnjax report results/runs/multirun/activation=tanh,sigmoid,relu__seq_len=64,256
  python -m rnnjax ...                              the same program"""


def usage() -> str:
    """The text of `rnnjax --help`."""
    width = max(len(f"{name} {c.usage}") for name, c in COMMANDS.items())
    lines = [f"usage: {PROG} COMMAND [ARGS ...]", "",
             "Per-timestep gradient norms ||dL/dH_t|| of recurrent networks, measured with JAX.",
             "", "commands:"]
    lines += [f"  {f'{name} {c.usage}':<{width}}  {c.summary}" for name, c in COMMANDS.items()]
    lines += ["", f"'{PROG} COMMAND --help' describes a command's arguments.", "", EXAMPLES]
    return "\n".join(lines)


def _call(main, argv: list[str], prog: str) -> int:
    """Calls a subcommand's `main(argv)` with its program name `prog` in its --help: passed as
    `prog=` where `main` takes it, else as sys.argv[0] while it runs (argparse's default)."""
    if "prog" in inspect.signature(main).parameters:
        code = main(argv, prog=prog)
    else:
        saved = sys.argv[:]
        sys.argv[0] = prog
        try:
            code = main(argv)
        finally:
            sys.argv[:] = saved
    return code or 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `rnnjax` command line: `rnnjax COMMAND [ARGS ...]`.

    Args:
      argv: the arguments after the program name (default: sys.argv[1:]).
    Returns:
      The exit code: the subcommand's, 0 for --help, 2 for a missing or unknown command (one
      line on stderr), 130 for a Ctrl-C the subcommand did not handle (one line), 141 when
      stdout was closed by its reader (nothing printed).
    """
    return quiet_on_closed_stdout(_dispatch, argv)


def _dispatch(argv: Sequence[str] | None) -> int:
    """`main` without its care for a closed stdout."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(usage())
        return 0
    if argv[:1] in (["-V"], ["--version"]):
        from rnnjax import __version__

        print(f"{PROG} {__version__}")
        return 0
    if not argv:
        print(f"{PROG}: error: a command is required: {', '.join(COMMANDS)} "
              f"('{PROG} --help' describes them)", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{PROG}: error: unknown command {name!r}; allowed: {', '.join(COMMANDS)} "
              f"('{PROG} --help' describes them)", file=sys.stderr)
        return 2
    return _run_command(name, rest, f"{PROG} {name}")  # `main` cares for a closed stdout


def run_command(name: str, argv: Sequence[str], prog: str) -> int:
    """Runs the subcommand `name` (a key of COMMANDS) with `argv`, as the program `prog` (the
    scripts in experiments/ call it too). A Ctrl-C the subcommand does not handle itself
    (`run` says what it interrupted) is one line and exit code 130, also while its module
    loads (JAX imports for a second), which a Ctrl-C waits for: an import cut off halfway
    leaves libraries broken (OmegaConf's turned it into an AttributeError). A closed stdout
    ends it quietly (`quiet_on_closed_stdout`)."""
    return quiet_on_closed_stdout(_run_command, name, argv, prog)


def _run_command(name: str, argv: Sequence[str], prog: str) -> int:
    """`run_command` without its care for a closed stdout."""
    try:
        with catching_ctrl_c():
            with held():
                module = importlib.import_module(COMMANDS[name].module)
            return _call(module.main, list(argv), prog)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


# ---------------------------------------------------------------- a reader that went away

def quiet_on_closed_stdout(fn: Callable[..., int], *args) -> int:
    """Calls `fn(*args)` and flushes stdout; a BrokenPipeError (the reader of stdout went away,
    `| head`) ends it quietly instead of a traceback, with exit code BROKEN_PIPE.

    Python ignores SIGPIPE, so a write to a closed pipe raises: in a print, or in the
    interpreter's final flush after `main` returned, which the flush here does first. stdout
    then points at os.devnull, so that no later flush raises again (Python's signal docs,
    "Note on SIGPIPE"). Log records written to a closed stream are dropped the same way, and
    the command goes on (`_logging_drops_closed_streams`).

    Args:
      fn: the command; its return value is the exit code (a SystemExit passes through).
    Returns:
      fn's exit code, or BROKEN_PIPE.
    """
    try:
        try:
            with _logging_drops_closed_streams():
                return fn(*args)
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        _to_devnull(sys.stdout)
        return BROKEN_PIPE


def _to_devnull(stream: TextIO | None) -> None:
    """Points the file descriptor under `stream` at os.devnull (where it has one): what is still
    buffered, and whatever is written later, goes nowhere instead of raising."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # no descriptor (a test's StringIO)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


@contextmanager
def _logging_drops_closed_streams() -> Iterator[None]:
    """Within it, a log record that a handler fails to write because its reader went away (a
    BrokenPipeError: Hydra's job log goes to stdout) is dropped quietly and its stream pointed
    at os.devnull, where logging printed "--- Logging error ---" and a traceback per record.
    Every other logging error is reported as before."""
    report = logging.Handler.handleError

    def handle_error(handler: logging.Handler, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            _to_devnull(getattr(handler, "stream", None))
        else:
            report(handler, record)

    logging.Handler.handleError = handle_error
    try:
        yield
    finally:
        logging.Handler.handleError = report
