"""Bad input tried automatically: hypothesis draws bad overrides (sizes, types,
unknown options and keys, missing, unreadable or too short files) and runs the app's command
line in-process, once as a run and once as a sweep (one case, `activation=foo`, also as a real
process). Every case must exit non-zero with a short message naming the offending key or
value, without a traceback, and without writing an output directory.

Every error is one line (`rnnjax: error: ...`): rnnjax's own validation, and Hydra's
composition errors (an unknown option or key, a wrong type), which Hydra printed in 6 to 10.

The explicit `@example`s are defects these tests found (all fixed), kept as regressions.
"""

import math
import os
import re
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import ROOT, exit_code_of
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from rnnjax.sweeps.app import main

RUN = [sys.executable, str(ROOT / "experiments" / "run.py")]
TRACEBACK = "Traceback (most recent call last)"
RESULT_FILES = ("grad_norms.parquet", "summary.json", "params.npz", "batch.npz",
                "metrics.parquet")
# Small sizes for every key a case leaves alone, so that a job a defect lets through is quick.
TINY = {"seq_len": "3", "hidden_size": "2", "batch_size": "1", "seeds": "1"}

# A few derandomized examples per strategy, no shrinking (a failure is reported as drawn) and
# no example database (nothing written into the checkout).
BAD = settings(max_examples=5, deadline=None, derandomize=True, database=None,
               phases=[Phase.explicit, Phase.generate],
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])


def few(n):
    return settings(BAD, max_examples=n)



# --------------------------------------------------------------------------------- the cases


class Case(NamedTuple):
    """A bad command line: `args` ends with KEY=BAD; the message must contain one of `names`.

    good: a valid value of KEY, so that the sweep is KEY=GOOD,BAD (every job is checked before
    the first starts); None: the
    sweep varies another key instead.
    """

    args: tuple[str, ...]
    names: tuple[str, ...]
    good: str | None


HYDRA_LITERALS = {"null", "true", "false", "nan", "inf"}  # parsed as values, not words
CONFIG_KEYS = {"cell", "activation", "init", "task", "probe", "train", "experiment", "hydra",
               "seq_len", "hidden_size", "batch_size", "seeds", "seed", "dtype", "resume",
               "max_memory_gb", "logger"}
GROUPS = {
    "cell": ("vanilla",),
    "activation": ("tanh", "sigmoid", "relu", "linear"),
    "init": ("normal", "xavier", "orthogonal", "identity", "gaussian", "spectral"),
    "task": ("random", "timemachine", "adding", "copy"),
    "probe": ("default",),
    "train": ("default",),
    "logger": ("none", "tensorboard", "wandb", "mlflow", "csv"),
}
INT_KEYS = ("seq_len", "hidden_size", "batch_size", "seeds", "seed", "train.steps",
            "train.log_every", "task.vocab_size")
FLOAT_KEYS = ("train.lr", "train.clip", "init.std")
ENUM_KEYS = {"dtype": ("float32", "float64"), "probe.loss_at": ("all", "last"),
             "train.optimizer": ("sgd", "adam", "rmsprop"),
             "train.bptt": ("full", "truncated", "randomized")}
GOOD = {"seq_len": "3", "hidden_size": "2", "batch_size": "1", "seeds": "1", "seed": "0",
        "train.steps": "0", "train.log_every": "10", "task.vocab_size": "28", "train.lr": "1.0",
        "train.clip": "1.0", "init.std": "0.01", "dtype": "float32", "probe.loss_at": "all",
        "train.optimizer": "sgd", "train.bptt": "full"}
GROUP_FIELDS = {"name", "unroll", "std", "gain", "radius", "path", "vocab_size", "tokens",
                "symbols", "loss_at", "steps",
                "epochs", "optimizer", "lr", "clip", "clip_value",
                "initial_scale", "bptt", "truncate", "log_every"}
INIT_PARAM = {"normal": "std", "orthogonal": "gain", "identity": "gain", "gaussian": "gain",
              "spectral": "radius"}


def _is_float(word):
    try:
        float(word)  # "infinity" is a float to OmegaConf too
    except ValueError:
        return False
    return True


words = st.text(string.ascii_lowercase, min_size=1, max_size=8).filter(
    lambda w: w not in HYDRA_LITERALS and not _is_float(w))
identifiers = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8).filter(
    lambda w: w[0] != "_" and w not in CONFIG_KEYS | HYDRA_LITERALS)


def fmt(x):
    """A number as an override value Hydra parses back to it ("-1e-05", "nan", "-inf")."""
    return repr(float(x)) if isinstance(x, float) else str(x)


non_positive = st.one_of(st.floats(min_value=-1e9, max_value=0.0),
                         st.sampled_from([math.nan, -math.inf]))


@st.composite
def bad_sizes(draw):
    """Out-of-range values, caught by rnnjax's validation."""
    kind = draw(st.sampled_from(["size", "seed", "steps", "log_every", "vocab", "lr", "clip",
                                 "init", "init_other", "truncate", "seed_32", "inf"]))
    if kind == "size":
        key = draw(st.sampled_from(["seq_len", "hidden_size", "batch_size", "seeds"]))
        return Case((f"{key}={draw(st.integers(-10**6, 0))}",), (f"{key}=",), GOOD[key])
    if kind in ("seed", "steps", "log_every", "vocab"):
        key, top = {"seed": ("seed", -1), "steps": ("train.steps", -1),
                    "log_every": ("train.log_every", 0), "vocab": ("task.vocab_size", 1)}[kind]
        return Case((f"{key}={draw(st.integers(-10**6, top))}",), (f"{key}=",), GOOD[key])
    if kind in ("lr", "clip"):
        key = f"train.{kind}"
        return Case((f"{key}={fmt(draw(non_positive))}",), (f"{key}=",), GOOD[key])
    if kind == "init":
        init = draw(st.sampled_from(sorted(INIT_PARAM)))
        key = f"init.{INIT_PARAM[init]}"
        return Case((f"init={init}", f"{key}={fmt(draw(non_positive))}"), (f"{key}=",),
                    "1.0")
    if kind == "seed_32":  # JAX's seeds are 32-bit: network s of seed + s must fit
        seeds = draw(st.integers(1, 4))
        seed = draw(st.integers(2**32 - seeds + 1, 2**64))
        return Case((f"seeds={seeds}", f"seed={seed}"), ("seed=",), "0")
    if kind == "inf":  # > 0 but not a number to train or initialize with
        key = draw(st.sampled_from(["train.lr", "train.clip", "init.std"]))
        return Case((f"{key}=inf",), (f"{key}=",), GOOD[key])
    if kind == "init_other":  # a parameter the option does not take
        init = draw(st.sampled_from(sorted(GROUPS["init"])))
        p = draw(st.sampled_from([p for p in ("std", "gain", "radius")
                                  if p != INIT_PARAM.get(init)]))
        value = fmt(draw(st.floats(min_value=0.01, max_value=10)))
        return Case((f"init={init}", f"init.{p}={value}"), (f"init.{p} ",), "null")
    bptt, least = draw(st.sampled_from([("truncated", 1), ("randomized", 2)]))
    value = draw(st.integers(-10**6, least - 1))
    return Case(("train.bptt=" + bptt, f"train.truncate={value}"), ("train.truncate=",),
                str(least))


@st.composite
def bad_types(draw):
    """Values of the wrong type, caught by Hydra/OmegaConf against the schema."""
    kind = draw(st.sampled_from(["int_word", "int_float", "float_word", "enum_word"]))
    if kind == "int_word":
        key, value = draw(st.sampled_from(INT_KEYS)), draw(words)
    elif kind == "int_float":
        key = draw(st.sampled_from(INT_KEYS))
        value = fmt(draw(st.floats(-1e6, 1e6)))
    elif kind == "float_word":
        key, value = draw(st.sampled_from(FLOAT_KEYS)), draw(words)
    else:
        key = draw(st.sampled_from(sorted(ENUM_KEYS)))
        value = draw(words.filter(lambda w, k=key: w not in ENUM_KEYS[k]))
    # OmegaConf's error, on one line ("KEY is invalid: Value ..."; it was Hydra's 6 lines); a
    # key typed Any is rnnjax's to check ("KEY=...").
    return Case((f"{key}={value}",), (f"{key} is invalid: ", f"{key}="), GOOD[key])


@st.composite
def unknown_options(draw):
    """A config group option that does not exist, or a value Hydra parses as no option name at
    all (null, a bool, a number): rnnjax's one line, with the options allowed (Hydra's own
    message was 10 lines)."""
    if draw(st.booleans()):
        group = draw(st.sampled_from(sorted(GROUPS)))
        value = draw(st.sampled_from(["null", "true", "false", "0", "1", "2.5"]))
        return Case((f"{group}={value}",), (f"{group}=",), GROUPS[group][0])
    group = draw(st.sampled_from(sorted(GROUPS) + ["+experiment"]))
    name = group.lstrip("+")
    option = draw(words.filter(lambda w: w not in GROUPS.get(name, ())))
    good = GROUPS[name][0] if name in GROUPS else None
    return Case((f"{group}={option}",), (f"{name}={option} is not an option; allowed: ",),
                good)


@st.composite
def unknown_keys(draw):
    """A key the config does not have, at the top or inside a group: overridden (Hydra's
    error, 7 lines, made one) or appended with `+` (which Hydra allows: else the job would
    silently ignore a misspelt key such as `+train.clipp=1`). One line, naming the keys
    allowed."""
    key = draw(st.one_of(identifiers, st.builds(
        "{}.{}".format, st.sampled_from(["train", "init", "task", "probe", "activation"]),
        identifiers.filter(lambda w: w not in GROUP_FIELDS))))
    value = draw(st.integers(0, 9))
    plus = "+" if draw(st.booleans()) else ""
    return Case((f"{plus}{key}={value}",), (f"{key} is not a config key; allowed in ",),
                None)


# --------------------------------------------------------------------------------- running


def tiny(args):
    keys = {a.split("=", 1)[0].lstrip("+~") for a in args}
    return [f"{k}={v}" for k, v in TINY.items() if k not in keys] + list(args)


@pytest.fixture
def command(monkeypatch, capsys):
    """`command(args, cwd) -> CompletedProcess`: the app's command line in-process, in `cwd`,
    with its exit code and output (`args` as a process would have them: `p.args[2:]`)."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # compact errors
    absl = sys.modules.get("absl.logging")
    if absl is not None:  # Hydra's logging setup would close pytest's stream (see test_sweep)
        monkeypatch.setattr(absl.get_absl_handler().python_handler, "stream", sys.__stderr__)

    def call(args, cwd):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = exit_code_of(main, list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(RUN + list(args), code, out, err)

    return call


def sweep_args(case, sweep):
    """The case as a sweep: KEY=GOOD,BAD, or the bad value with another key swept."""
    *head, last = case.args
    if case.good is not None:
        key, bad = last.split("=", 1)
        args = [*head, f"{key}={case.good},{bad}"]
    else:
        args = [*case.args, "batch_size=1,2"]
    return ["-m", f"hydra.sweep.dir={sweep}", *tiny(args)]


def run_and_sweep(case, base):
    """The case as one job and as a sweep, each in a fresh directory under `base`:
    [(args, cwd, output dir)] for both."""
    out = []
    for mode in ("run", "sweep"):
        cwd = Path(tempfile.mkdtemp(prefix=f"{mode}_", dir=base))
        target = cwd / ("job" if mode == "run" else "sweep")
        args = ([f"hydra.run.dir={target}", *tiny(case.args)] if mode == "run"
                else sweep_args(case, target))
        out.append((args, cwd, target))
    return out


def written(cwd):
    return sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.is_file())


def check_clean_failure(p, cwd, target, names):
    """Non-zero exit, no traceback, nothing written, a short message naming the key/value."""
    cmd = " ".join(p.args[2:])
    ctx = f"\n$ python experiments/run.py {cmd}\nexit {p.returncode}\n--- stderr:\n" \
          f"{p.stderr}--- stdout (tail):\n{p.stdout[-1500:]}"
    assert p.returncode != 0, "exit code 0" + ctx
    assert TRACEBACK not in p.stderr and TRACEBACK not in p.stdout, "a traceback" + ctx
    results = [f for f in written(cwd) if Path(f).name in RESULT_FILES]
    assert not results, f"result files written: {results}" + ctx
    assert not target.exists(), f"output directory created: {written(cwd)}" + ctx
    assert not (cwd / "results").exists() and not (cwd / "outputs").exists(), \
        f"default output directory created: {written(cwd)}" + ctx
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    message = "\n".join(ln.split(" (in job ")[0] for ln in lines
                        if not ln.startswith("(in job "))
    assert any(n in message for n in names), f"the message names none of {names}" + ctx
    assert len(lines) == 1 and lines[0].startswith("rnnjax: error: "), \
        "not a one-line rnnjax error" + ctx


def check_case(case, base, command):
    """The case fails cleanly both as a run and as a sweep (every job tiny: a defect that lets
    jobs run costs little)."""
    for args, cwd, target in run_and_sweep(case, base):
        check_clean_failure(command(args, cwd), cwd, target, case.names)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_bad_option_is_one_line_from_a_real_process(tmp_path, jax_cache):
    """One case as a user runs it: a process of its own, run and sweep."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}  # compact errors
    env["JAX_COMPILATION_CACHE_DIR"] = jax_cache
    case = Case(("activation=foo",), ("activation=foo is not an option; allowed: ",), "tanh")
    for args, cwd, target in run_and_sweep(case, tmp_path):
        p = subprocess.run(RUN + args, cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=300)
        check_clean_failure(p, cwd, target, case.names)


# --------------------------------------------------------------------------------- tests


@few(2)
@given(case=bad_sizes())
@example(case=Case(("seeds=2", "seed=4294967295"), ("seed=",), "0"))  # wrapped to 0
@example(case=Case(("train.steps=1", "train.lr=inf"), ("train.lr=",), "1.0"))  # NaN, "ok"
@pytest.mark.e2e
def test_out_of_range_values_give_one_line(case, tmp_path, command):
    check_case(case, tmp_path, command)


@few(1)
@given(case=bad_types())
def test_wrong_types_name_the_key(case, tmp_path, command):
    check_case(case, tmp_path, command)


@few(1)
@given(case=unknown_options())
@example(case=Case(("activation=null",), ("activation=",), "tanh"))  # was a traceback
@example(case=Case(("activation=foo",), ("activation=foo is not an option; allowed: ",),
                   "tanh"))  # was Hydra's 10 lines
def test_unknown_group_options_name_the_group(case, tmp_path, command):
    check_case(case, tmp_path, command)


@few(1)
@given(case=unknown_keys())
@example(case=Case(("+train.clipp=1",), ("train.clipp",), None))  # was ignored, exit 0
def test_unknown_keys_are_rejected(case, tmp_path, command):
    check_case(case, tmp_path, command)


# Never valid UTF-8, whatever follows: bytes no character starts with, a stray continuation
# byte, an overlong encoding, a surrogate; and sequences cut short by the end of the file.
NON_UTF8 = [b"\xff", b"\xfe\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80"]
CUT_SHORT = [b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", "caf\xe9".encode("latin-1")]
file_names = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)


@st.composite
def bad_files(draw):
    """(kind, file name, bytes to write or None): a file task.path cannot be read as text."""
    kind = draw(st.sampled_from(["missing", "missing_dir", "directory", "non_utf8"]))
    name = draw(file_names) + ".txt"
    if kind != "non_utf8":
        return kind, name, None
    text = draw(st.text(string.ascii_letters + " .\n", max_size=40)).encode()
    if draw(st.booleans()):
        data = text + draw(st.sampled_from(NON_UTF8)) + draw(st.binary(max_size=20))
    else:
        data = text + draw(st.sampled_from(CUT_SHORT))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return kind, name, data
    raise AssertionError(f"{data!r} is valid UTF-8")


@few(2)
@given(spec=bad_files())
@example(spec=("non_utf8", "latin1.txt", "The Time Traveller (for so it will be conveni"
                                         "ent to speak of him) was expounding a recondit"
                                         "e matter to us. caf\xe9".encode("latin-1")))
@pytest.mark.e2e
def test_unreadable_text_files(spec, tmp_path, command):
    kind, name, data = spec
    d = Path(tempfile.mkdtemp(prefix="data_", dir=tmp_path))
    path = d / name
    if kind == "missing_dir":
        path = d / "no_such_dir" / name
    elif kind == "directory":
        path.mkdir()
    elif kind == "non_utf8":
        path.write_bytes(data)
    check_case(Case(("task=timemachine", f"task.path={path}"), ("task.path",), None),
               tmp_path, command)


def preprocess(text):
    """d2l's preprocessing, as README states it (non-letter runs to a space, lowercase)."""
    return re.sub("[^A-Za-z]+", " ", text).lower()


@st.composite
def short_texts(draw):
    """(text, seq_len) with fewer than seq_len + 1 characters after preprocessing."""
    text = draw(st.text(string.ascii_letters + " .,;!?0123456789\n\xe9\u00df", max_size=30))
    return text, max(len(preprocess(text)), 1) + draw(st.integers(0, 5))


@few(1)
@given(spec=short_texts())
@example(spec=("Hello, world!", 12))  # "hello world ": 12 characters, a window needs 13
def test_text_shorter_than_one_window(spec, tmp_path, command):
    text, seq_len = spec
    assert len(preprocess(text)) < seq_len + 1
    path = Path(tempfile.mkdtemp(prefix="data_", dir=tmp_path)) / "short.txt"
    path.write_text(text, encoding="utf-8")
    check_case(Case(("task=timemachine", f"task.path={path}", f"seq_len={seq_len}"),
                    ("seq_len", "task.path"), None), tmp_path, command)


@few(1)
@given(key=st.sampled_from(INT_KEYS + FLOAT_KEYS), name=identifiers)
@example(key="seq_len", name="oops")
def test_interpolation_to_a_missing_key(key, name, tmp_path, command):
    check_case(Case((f"{key}=${{{name}}}",), (key, name), GOOD[key]), tmp_path, command)
