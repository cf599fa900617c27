"""Checks rnnjax's GRU and LSTM language models against PyTorch, from the same initial weights.

For each cell, d2l's setting (d2l 10.2 GRU, 10.1 LSTM): The Time Machine, characters as tokens
(28), batch 1024, 32 steps, 32 hidden units, every weight N(0, 0.01^2), biases 0, SGD lr 4,
global-norm gradient clipping at 1, 50 epochs.

  rnnjax    `experiments/run.py +experiment=d2l_<cell>_scratch` in its own process, with an
            empty JAX compilation cache (compiling counts); its initial weights are read back
            from the job's params.npz.
  PyTorch   an independent run started from those same weights: for the LSTM torch.nn.LSTM
            (which computes d2l's LSTM; its gate blocks are mapped, and bias_hh is held at 0 so
            that each gate has one trained bias, as in d2l); for the GRU a PyTorch rewrite of
            d2l's from-scratch equations (torch.nn.GRU applies the reset gate after the
            recurrent product, a different function).

Both sides follow d2l's data pipeline as rnnjax's timemachine task does: the first 10000 windows
of 33 tokens train, in a fresh random order each epoch, in batches of 1024 (the last one 784);
the next 5000 validate. With `--order rnnjax` (the default) PyTorch trains on the very batches
rnnjax drew (rnnjax's `train_batch` for the job's seed), so the two runs differ only by their
arithmetic; with `--order torch` PyTorch shuffles with its own generator, an independent data
order. The two should agree within 5% in train and validation perplexity. Train perplexity is
exp of the mean loss over the last epoch's batches, validation perplexity exp of the mean loss
over the 5000 validation windows, both after the last epoch; the per-epoch train perplexities
of both and the first epoch where they are more than 1% apart are recorded too. In float32 the two
runs' rounding differs, and 500 SGD steps at lr 4 amplify it; `--dtype float64` (both sides)
shows how closely the computations themselves agree.

Usage: python experiments/d2l_cells_check.py [--cells gru lstm] [--epochs 50] [--data PATH]
       [--order rnnjax|torch] [--dtype float32|float64] [--torch-threads 1] [--out FILE]
       (needs the bench extra: PyTorch)

The JSON goes to a new file under results/runs/d2l_cells_check/ (git-ignored) unless --out
names one: `--out results/d2l_cells_check.json` (and, with `--dtype float64`,
`--out results/d2l_cells_check_float64.json`) replaces the repository's reference.
"""

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rnnjax.bench.common import write_json
from rnnjax.cli import default_out, output_file, quiet_on_closed_stdout

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the bench extra is missing: main() says so
    torch = None

REPO = Path(__file__).resolve().parent.parent
DATA_FILE = "timemachine.txt"
NUM_STEPS, NUM_HIDDENS, BATCH_SIZE, LR, GRAD_CLIP = 32, 32, 1024, 4.0, 1.0
NUM_TRAIN, NUM_VAL = 10000, 5000
TOLERANCE = 0.05  # relative difference of perplexities
EXPERIMENT = {"gru": "d2l_gru_scratch", "lstm": "d2l_lstm_scratch"}


# ---------------------------------------------------------------- data (d2l's TimeMachine)

def load_windows(path: Path):
    """d2l's TimeMachine: letters only, lower case, characters as tokens, the vocabulary the
    sorted distinct tokens plus <unk>. Returns (train X, Y (10000, 32)), (val X, Y (5000, 32))
    as int64 tensors and the vocabulary size."""
    text = re.sub("[^A-Za-z]+", " ", path.read_text(encoding="utf-8")).lower()
    vocab = sorted(set(["<unk>"] + list(text)))
    index = {t: i for i, t in enumerate(vocab)}
    corpus = torch.tensor([index[t] for t in text])
    windows = corpus.unfold(0, NUM_STEPS + 1, 1)[: NUM_TRAIN + NUM_VAL]  # windows[i] starts at i
    X, Y = windows[:, :-1], windows[:, 1:]
    return (X[:NUM_TRAIN], Y[:NUM_TRAIN]), (X[NUM_TRAIN:], Y[NUM_TRAIN:]), len(vocab)


# ---------------------------------------------------------------- the PyTorch peers

def tensor(a):
    """A trained parameter from rnnjax's array, in its dtype."""
    return torch.tensor(np.asarray(a), requires_grad=True)


class GRUScratch:
    """d2l 10.2's GRUScratch (a Python loop over time), its weights given; the reset gate acts
    before the recurrent product, (R * H) W_hh."""

    def __init__(self, p):
        names = ["W_xz", "W_hz", "b_z", "W_xr", "W_hr", "b_r", "W_xh", "W_hh", "b_h"]
        self.w = {k: tensor(p[k]) for k in names}

    def parameters(self):
        return list(self.w.values())

    def __call__(self, X):
        """X: (batch, num_steps) tokens; returns the hidden states (num_steps, batch, H)."""
        w = self.w
        # X_t W_x* for every step at once: the row of W_x* picked by the token (= one-hot @ W)
        xz, xr, xh = (w[k][X.T] for k in ("W_xz", "W_xr", "W_xh"))
        H = torch.zeros((X.shape[0], w["W_hh"].shape[0]), dtype=w["W_hh"].dtype)
        outputs = []
        for t in range(X.shape[1]):
            Z = torch.sigmoid(xz[t] + H @ w["W_hz"] + w["b_z"])
            R = torch.sigmoid(xr[t] + H @ w["W_hr"] + w["b_r"])
            H_tilde = torch.tanh(xh[t] + (R * H) @ w["W_hh"] + w["b_h"])
            H = Z * H + (1 - Z) * H_tilde
            outputs.append(H)
        return torch.stack(outputs)


class TorchLSTM:
    """torch.nn.LSTM with d2l's LSTM weights: PyTorch's gate blocks are (i, f, g, o) with g the
    input node; inputs are one-hot rows; bias_hh is 0 and not trained (d2l has one bias per
    gate; training both of PyTorch's would double the biases' step)."""

    def __init__(self, p):
        V, H = np.asarray(p["W_xi"]).shape
        self.vocab_size = V
        self.lstm = torch.nn.LSTM(V, H, dtype=torch.from_numpy(np.asarray(p["W_xi"])).dtype)
        with torch.no_grad():
            self.lstm.weight_ih_l0.copy_(torch.tensor(np.concatenate(
                [np.asarray(p[f"W_x{g}"]).T for g in "ifco"])))
            self.lstm.weight_hh_l0.copy_(torch.tensor(np.concatenate(
                [np.asarray(p[f"W_h{g}"]).T for g in "ifco"])))
            self.lstm.bias_ih_l0.copy_(torch.tensor(np.concatenate(
                [np.asarray(p[f"b_{g}"]) for g in "ifco"])))
            self.lstm.bias_hh_l0.zero_()
        self.lstm.bias_hh_l0.requires_grad_(False)

    def parameters(self):
        return [self.lstm.weight_ih_l0, self.lstm.weight_hh_l0, self.lstm.bias_ih_l0]

    def __call__(self, X):
        onehot = F.one_hot(X.T, self.vocab_size).type(self.lstm.weight_ih_l0.dtype)
        return self.lstm(onehot)[0]


class RNNLM:
    """d2l's RNNLMScratch read-out over a recurrent layer: O_t = H_t W_hq + b_q, cross-entropy
    averaged over every token of the batch."""

    def __init__(self, rnn, p):
        self.rnn = rnn
        self.W_hq, self.b_q = tensor(p["W_hq"]), tensor(p["b_q"])

    def parameters(self):
        return [*self.rnn.parameters(), self.W_hq, self.b_q]

    def loss(self, X, Y):
        logits = self.rnn(X) @ self.W_hq + self.b_q  # (num_steps, batch, vocab)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.T.reshape(-1))


def torch_order(X, Y, epochs: int):
    """d2l's epochs with PyTorch's own shuffling: yields one list of (X, Y) batches per epoch."""
    for _ in range(epochs):
        perm = torch.randperm(NUM_TRAIN)  # a fresh order each epoch
        yield [(X[perm[b:b + BATCH_SIZE]], Y[perm[b:b + BATCH_SIZE]])
               for b in range(0, NUM_TRAIN, BATCH_SIZE)]


def rnnjax_order(cell: str, p: dict, data: Path, epochs: int, seed: int = 0):
    """The batches rnnjax's job trained on, epoch by epoch: its timemachine task's
    `train_batch` with the job's data key (the first of `jax.random.split` of the training key,
    as `rnnjax.core.train.make_train_chunk` splits it; the training key is the third of
    `jax.random.split(key(seed), 4)`, as `rnnjax.app.job.make_setup` splits it), the padding of
    each epoch's last batch dropped. With --dtype float64 the two runs then agree to many
    digits for many epochs, which shows that the batches are the same."""
    import jax
    import jax.numpy as jnp

    from rnnjax.core.cells import CELLS
    from rnnjax.core.tasks import make_task

    task = make_task("timemachine", BATCH_SIZE, NUM_STEPS, path=str(data))
    k_params, _, k_train, _ = jax.random.split(jax.random.key(seed), 4)
    # the key derivation is the job's: the same key gives the job's initial weights (jitted,
    # as in the job: eagerly, XLA rounds the scaling differently in the last bit)
    dtype = np.asarray(p["W_hq"]).dtype
    if dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    init = CELLS[cell].build(init="normal").init
    again = jax.jit(lambda k: init(k, task.D, NUM_HIDDENS, task.Q, jnp.dtype(dtype)))(k_params)
    if not all(np.array_equal(np.asarray(v), p[k]) for k, v in again._asdict().items()):
        raise SystemExit("rnnjax's key derivation changed: update rnnjax_order")
    k_data = jax.random.split(k_train)[0]
    batch = jax.jit(task.train_batch)
    for epoch in range(epochs):
        out = []
        for b in range(task.steps_per_epoch):
            x, y, mask = (np.asarray(a) for a in batch(k_data, epoch * task.steps_per_epoch + b))
            keep = mask > 0
            out.append((torch.tensor(x[keep], dtype=torch.int64),
                        torch.tensor(y[keep], dtype=torch.int64)))
        yield out


def train_torch(cell: str, p: dict, data: Path, epochs: int, order: str = "rnnjax",
                threads: int = 1, seed: int = 0) -> dict:
    """d2l's Trainer from the initial weights `p`: SGD, d2l's clip_gradients (global norm over
    every parameter), with `threads` PyTorch threads, on rnnjax's batches or its own shuffling
    (`order`). Returns the final perplexities and the wall time (without the time taken to draw
    rnnjax's batches, `batches_s`)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    (X, Y), (X_val, Y_val), V = load_windows(data)
    if V != np.asarray(p["W_hq"]).shape[1]:
        raise SystemExit(f"vocabulary of {V} tokens, rnnjax's W_hq has "
                         f"{np.asarray(p['W_hq']).shape[1]}")
    model = RNNLM(GRUScratch(p) if cell == "gru" else TorchLSTM(p), p)
    params = model.parameters()
    epochs_ = (rnnjax_order(cell, p, data, epochs, seed) if order == "rnnjax"
               else torch_order(X, Y, epochs))
    data_s = 0.0  # drawing rnnjax's batches (JAX), left out of PyTorch's time
    per_epoch = []
    while True:
        t0 = time.perf_counter()
        batches = next(epochs_, None)
        data_s += time.perf_counter() - t0
        if batches is None:
            break
        losses = []
        for Xb, Yb in batches:
            loss = model.loss(Xb, Yb)
            for q in params:
                q.grad = None
            loss.backward()
            with torch.no_grad():
                norm = torch.sqrt(sum(torch.sum(q.grad**2) for q in params))
                scale = min(1.0, GRAD_CLIP / float(norm))
                for q in params:
                    q -= LR * scale * q.grad
            losses.append(loss.item())
        per_epoch.append(math.exp(sum(losses) / len(losses)))
    with torch.no_grad():
        val_loss = model.loss(X_val, Y_val).item()
    return {"train_ppl": per_epoch[-1], "val_ppl": math.exp(val_loss),
            "wall_s": time.perf_counter() - start - data_s, "batches_s": data_s,
            "torch_threads": torch.get_num_threads(), "train_ppl_per_epoch": per_epoch}


# ---------------------------------------------------------------- rnnjax

def run_rnnjax(cell: str, data: Path, epochs: int, run_dir: Path, dtype: str = "float32"
               ) -> dict:
    """The experiment in a fresh process with an empty compilation cache. Returns the final
    perplexities, the process's and the job's wall times, and the initial weights."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "RNNJAX_DATA": str(data.parent),
               "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "experiments/run.py", f"+experiment={EXPERIMENT[cell]}",
               f"train.epochs={epochs}", f"dtype={dtype}", f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
        raise SystemExit(f"failed (exit code {proc.returncode}): {' '.join(cmd)}")
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["status"] != "ok":
        print(f"  warning: rnnjax run status {summary['status']!r}", flush=True)
    with np.load(run_dir / "params.npz") as npz:
        first = {k: npz[k][0] for k in npz.files}  # seed 0, as initialized
    import pandas as pd

    metrics = pd.read_parquet(run_dir / "metrics.parquet")  # one row per epoch (log_every)
    tr = summary["training"]
    return {"train_ppl": tr["final_train_ppl"], "val_ppl": tr["final_val_ppl"],
            "wall_s": wall, "job_s": summary["wall_time_s"],
            "train_ppl_per_epoch": metrics.sort_values("train_step").train_ppl.tolist(),
            "params": first}


# ---------------------------------------------------------------- main

def data_file(arg):
    """--data (a directory holding timemachine.txt, or the file), else $RNNJAX_DATA's."""
    if arg is not None:
        p = Path(arg).expanduser()
        return (p / DATA_FILE if p.is_dir() else p).resolve()
    return Path(os.environ.get("RNNJAX_DATA", ".")).expanduser().resolve() / DATA_FILE


def parse_args(argv=None):
    """The command line, validated: one line and exit code 2 for a bad value or --out.

    Args:
      argv: the arguments (default: sys.argv[1:]).
    Returns:
      The arguments, with `data` the text file and `out` the JSON file to write.
    """
    parser = argparse.ArgumentParser(
        description="Trains d2l's GRU and LSTM language models (d2l 10.2, 10.1) with rnnjax and "
        "with PyTorch from the same initial weights, and compares train and validation "
        "perplexity (within 5% is agreement: `within_tolerance` in the JSON).")
    parser.add_argument("--cells", nargs="+", choices=sorted(EXPERIMENT),
                        default=["gru", "lstm"], help="which cells (default: gru lstm)")
    parser.add_argument("--epochs", type=int, default=50,
                        help="epochs, on both sides (default: %(default)s)")
    parser.add_argument("--data", help="timemachine.txt or a directory holding it (default: "
                        "$RNNJAX_DATA/timemachine.txt)")
    parser.add_argument("--order", choices=["rnnjax", "torch"], default="rnnjax",
                        help="PyTorch's batches: rnnjax's (the same order) or its own shuffling "
                        "(default: %(default)s)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="both sides' dtype; float64 shows how far apart the arithmetic "
                        "alone leaves them (default: %(default)s)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="PyTorch's threads; on a shared 2-core machine two threads ran "
                        "an epoch 10x slower than one (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="the JSON results file (default: a new file under "
                        "results/runs/d2l_cells_check/ of the repository, git-ignored; `--out "
                        "results/d2l_cells_check.json` replaces the repository's reference)")
    args = parser.parse_args(argv)
    if torch is None:
        parser.exit(2, "d2l_cells_check.py needs PyTorch: install the bench extra, "
                       "pip install -e '.[bench]'\n")
    args.data = data_file(args.data)
    if not args.data.is_file():
        parser.error(f"no text file at {args.data}: pass --data or set RNNJAX_DATA")
    if args.data.name != DATA_FILE:
        parser.error(f"rnnjax reads $RNNJAX_DATA/{DATA_FILE}: name the file {DATA_FILE}")
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.torch_threads < 1:
        parser.error("--torch-threads must be >= 1")
    # checked before minutes of training
    args.out = output_file(parser, args.out, REPO / default_out("d2l_cells_check",
                                                                f"-{args.dtype}"))
    return args


def main(argv=None):
    """Trains and compares each cell (see the module's docstring); exit code 1 when a cell's
    perplexities differ by more than TOLERANCE."""
    args = parse_args(argv)
    rows = []
    for cell in args.cells:
        with tempfile.TemporaryDirectory() as run_dir:
            print(f"{cell}: rnnjax, {args.epochs} epochs...", flush=True)
            jx = run_rnnjax(cell, args.data, args.epochs, Path(run_dir), args.dtype)
        print(f"{cell}: PyTorch from the same initial weights...", flush=True)
        pt = train_torch(cell, jx.pop("params"), args.data, args.epochs, args.order,
                         args.torch_threads)
        diff = {k: abs(jx[k] - pt[k]) / pt[k] for k in ("train_ppl", "val_ppl")}
        # the first epoch whose train perplexities differ by more than 1% (None: none)
        apart = [e + 1 for e, (a, b) in enumerate(zip(jx["train_ppl_per_epoch"],
                                                      pt["train_ppl_per_epoch"], strict=True))
                 if abs(a - b) > 0.01 * b]
        rows.append({"cell": cell, "rnnjax": jx, "torch": pt, "relative_difference": diff,
                     "first_epoch_over_1_percent": apart[0] if apart else None,
                     "within_tolerance": all(d <= TOLERANCE for d in diff.values())})
        print(f"  rnnjax  train ppl {jx['train_ppl']:.3f}  val ppl {jx['val_ppl']:.3f}  "
              f"({jx['wall_s']:.1f} s process, {jx['job_s']:.1f} s job)\n"
              f"  PyTorch train ppl {pt['train_ppl']:.3f}  val ppl {pt['val_ppl']:.3f}  "
              f"({pt['wall_s']:.1f} s)\n"
              f"  difference: train {100 * diff['train_ppl']:.2f}%, val "
              f"{100 * diff['val_ppl']:.2f}% "
              f"({'within' if rows[-1]['within_tolerance'] else 'OUTSIDE'} "
              f"{100 * TOLERANCE:.0f}%); train perplexities first more than 1% apart "
              f"after epoch {apart[0] if apart else 'none'}", flush=True)

    import jax  # only for the record

    write_json({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "epochs": args.epochs,
                "order": args.order, "dtype": args.dtype,
                "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "jax": jax.__version__, "torch": torch.__version__,
                            "load_average_1min_at_end": os.getloadavg()[0]},
                "tolerance": TOLERANCE, "results": rows}, args.out)
    print(f"wrote {args.out}")
    if not all(r["within_tolerance"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(quiet_on_closed_stdout(main))  # `| head`: no BrokenPipeError traceback
