"""The `rnnjax` command (also `python -m rnnjax`): one program, a subcommand per tool.

    rnnjax run [-m] [KEY=VALUE ...]     one job or a sweep (Hydra's app, as experiments/run.py)
    rnnjax report PATH [--out DIR]      figures and report.md of a run or sweep
    rnnjax reproduce [--only NAME]      every published figure and results/REPORT.md
    rnnjax bench [...]                  probe speed and memory against PyTorch and a JAX loop
    rnnjax bench-train [...]            training speed against PyTorch

Each subcommand is the `main(argv)` of its module, imported only when it is chosen, so that
`rnnjax --help` starts no JAX. The scripts in experiments/ call the same functions.
"""

import importlib
import inspect
import sys
from collections.abc import Sequence
from typing import NamedTuple

from rnnjax.interrupt import INTERRUPTED, catching_ctrl_c, held

PROG = "rnnjax"


class Command(NamedTuple):
    """A subcommand: the module whose `main(argv)` runs it, and one line for `rnnjax --help`."""

    module: str
    usage: str  # the arguments, as the help lists them
    summary: str


COMMANDS = {
    "run": Command("rnnjax.sweep", "[-m] [KEY=VALUE ...]",
                   "one job, or a sweep with -m (--help lists every key)"),
    "report": Command("rnnjax.report", "PATH [--out DIR]",
                      "figures and report.md of a run or sweep directory"),
    "reproduce": Command("rnnjax.reproduce", "[--only NAME]",
                         "every published figure and results/REPORT.md, under ./results"),
    "bench": Command("rnnjax.bench", "[--quick] [...]",
                     "probe speed, compile time and memory against PyTorch and a JAX loop"),
    "bench-train": Command("rnnjax.bench_train", "[--epochs N] [...]",
                           "training speed of d2l's RNN language model against PyTorch"),
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
      line on stderr), 130 for a Ctrl-C the subcommand did not handle (one line).
    """
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
    return run_command(name, rest, f"{PROG} {name}")


def run_command(name: str, argv: Sequence[str], prog: str) -> int:
    """Runs the subcommand `name` (a key of COMMANDS) with `argv`, as the program `prog` (the
    scripts in experiments/ call it too). A Ctrl-C the subcommand does not handle itself
    (`run` says what it interrupted) is one line and exit code 130, also while its module
    loads (JAX imports for a second), which a Ctrl-C waits for: an import cut off halfway
    leaves libraries broken (OmegaConf's turned it into an AttributeError)."""
    try:
        with catching_ctrl_c():
            with held():
                module = importlib.import_module(COMMANDS[name].module)
            return _call(module.main, list(argv), prog)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
