"""Benchmark: wall time of training d2l's RNN language model from scratch, PyTorch vs rnnjax.

The model and training (identical on both sides) are d2l's section 9.5 ("RNN implementation
from scratch"): a character-level tanh RNN language model on The Time Machine (28 tokens,
32 steps, 32 hidden units, every weight matrix N(0, 0.01^2), biases zero), batch 1024, SGD
lr 1, global-norm gradient clipping at 1, 100 epochs over the first 10000 windows, and
validation on the next 5000 windows after every epoch.

The contenders run one after another on this machine, each as its own subprocess:

  PyTorch eager   an independent rewrite of d2l's PyTorch code (this file, --torch-worker):
                  a Python loop over the time steps, a shuffling DataLoader, one seed, all
                  CPU cores (torch.set_num_threads(os.cpu_count())).
  rnnjax          `experiments/run.py +experiment=d2l_rnn_scratch`, with seeds=1 and with
                  seeds=3 (the seeds vmapped into one compiled program), each with an empty
                  JAX compilation cache, so compilation is part of the time.

"wall s (process)" is the subprocess's wall clock, Python and library imports included;
"job s" is the time the job measures itself (data loading, setup, compilation, training and
validation; imports excluded). The ratios divide PyTorch's process time (times 3 for three
seeds, trained one after another) by rnnjax's process time. Perplexities are exp of the mean
loss over the last epoch's training batches and over the validation set (rnnjax: summary.json's
training.final_train_ppl and final_val_ppl, the mean over seeds).

Usage: python experiments/bench_train.py [--epochs 100] [--data PATH] [--skip-torch] [--out F]
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

try:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset
except ImportError:  # the bench extra is missing: main() says so
    torch = None

DATA_FILE = "timemachine.txt"
INSTALL_HINT = "install the bench extra: pip install -e '.[bench]'"

# d2l 9.5's settings
NUM_STEPS, NUM_HIDDENS, BATCH_SIZE, LR, GRAD_CLIP, SIGMA = 32, 32, 1024, 1.0, 1.0, 0.01
NUM_TRAIN, NUM_VAL = 10000, 5000
SEED = 0


# ---------------------------------------------------------------- PyTorch eager (d2l 9.5)

class RNNScratch:
    """d2l's RNNScratch: H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h), a Python loop over time."""

    def __init__(self, num_inputs, num_hiddens, sigma=SIGMA):
        self.num_hiddens = num_hiddens
        self.W_xh = (torch.randn(num_inputs, num_hiddens) * sigma).requires_grad_()
        self.W_hh = (torch.randn(num_hiddens, num_hiddens) * sigma).requires_grad_()
        self.b_h = torch.zeros(num_hiddens, requires_grad=True)

    def parameters(self):
        return [self.W_xh, self.W_hh, self.b_h]

    def __call__(self, inputs, state=None):
        """inputs: (num_steps, batch, num_inputs); returns the list of states and the last."""
        if state is None:
            state = torch.zeros((inputs.shape[1], self.num_hiddens))
        outputs = []
        for X in inputs:
            state = torch.tanh(torch.matmul(X, self.W_xh) + torch.matmul(state, self.W_hh)
                               + self.b_h)
            outputs.append(state)
        return outputs, state


class RNNLMScratch:
    """d2l's RNNLMScratch: one-hot inputs, the RNN, a linear read-out at every step."""

    def __init__(self, rnn, vocab_size, sigma=SIGMA):
        self.rnn, self.vocab_size = rnn, vocab_size
        self.W_hq = (torch.randn(rnn.num_hiddens, vocab_size) * sigma).requires_grad_()
        self.b_q = torch.zeros(vocab_size, requires_grad=True)

    def parameters(self):
        return [*self.rnn.parameters(), self.W_hq, self.b_q]

    def __call__(self, X):
        """X: (batch, num_steps) token ids; returns logits (batch, num_steps, vocab_size)."""
        embs = F.one_hot(X.T, self.vocab_size).type(torch.float32)
        rnn_outputs, _ = self.rnn(embs)
        return torch.stack([torch.matmul(H, self.W_hq) + self.b_q for H in rnn_outputs], 1)

    def loss(self, Y_hat, Y):
        """Cross-entropy averaged over all tokens of the batch."""
        return F.cross_entropy(Y_hat.reshape(-1, Y_hat.shape[-1]), Y.reshape(-1))


def clip_gradients(params, grad_clip_val):
    """d2l's clip_gradients: rescale all gradients when their global norm exceeds the bound."""
    norm = torch.sqrt(sum(torch.sum(p.grad**2) for p in params))
    if norm > grad_clip_val:
        for p in params:
            p.grad[:] *= grad_clip_val / norm


def train_step(model, params, X, Y):
    """One d2l Trainer step: zero grads, backward, clip, plain SGD; returns the loss."""
    loss = model.loss(model(X), Y)
    for p in params:
        p.grad = None
    loss.backward()
    with torch.no_grad():
        clip_gradients(params, GRAD_CLIP)
        for p in params:
            p -= LR * p.grad
    return loss.item()


def load_timemachine(path):
    """d2l's TimeMachine: letters only, lower case, characters as tokens, vocab of the sorted
    distinct tokens plus <unk>. Returns X, Y (the first NUM_TRAIN + NUM_VAL windows of
    NUM_STEPS + 1 token ids, X the first NUM_STEPS of each and Y shifted by one) and the
    vocabulary size."""
    text = re.sub("[^A-Za-z]+", " ", Path(path).read_text(encoding="utf-8")).lower()
    tokens = list(text)
    vocab = sorted(set(["<unk>"] + tokens))
    index = {t: i for i, t in enumerate(vocab)}
    corpus = torch.tensor([index[t] for t in tokens])
    windows = corpus.unfold(0, NUM_STEPS + 1, 1)[: NUM_TRAIN + NUM_VAL]  # windows[i] starts at i
    return windows[:, :-1], windows[:, 1:], len(vocab)


def train_torch(path, epochs):
    """Trains d2l's RNN LM for `epochs` epochs; returns the job time and final perplexities."""
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(SEED)
    start = time.perf_counter()
    X, Y, vocab_size = load_timemachine(path)
    train = DataLoader(TensorDataset(X[:NUM_TRAIN], Y[:NUM_TRAIN]), batch_size=BATCH_SIZE,
                       shuffle=True)
    val = DataLoader(TensorDataset(X[NUM_TRAIN:], Y[NUM_TRAIN:]), batch_size=BATCH_SIZE)
    model = RNNLMScratch(RNNScratch(vocab_size, NUM_HIDDENS), vocab_size)
    params = model.parameters()
    for _ in range(epochs):
        train_losses = [train_step(model, params, Xb, Yb) for Xb, Yb in train]
        with torch.no_grad():
            val_losses = [model.loss(model(Xb), Yb).item() for Xb, Yb in val]
    return {
        "job_s": time.perf_counter() - start,
        "train_ppl": math.exp(sum(train_losses) / len(train_losses)),
        "val_ppl": math.exp(sum(val_losses) / len(val_losses)),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- the contenders

def run_timed(cmd, env=None):
    """Runs `cmd`; returns (completed process, wall seconds). Exits with an
    error, after printing the command's output, when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stdout, proc.stderr, sep="\n", file=sys.stderr)
        sys.exit(f"failed (exit code {proc.returncode}): {' '.join(cmd)}")
    return proc, wall


def row(name, seeds, process_s, job_s, train_ppl, val_ppl):
    return {"name": name, "seeds": seeds, "process_s": process_s, "job_s": job_s,
            "train_ppl": train_ppl, "val_ppl": val_ppl, "s_per_seed": process_s / seeds}


def run_torch(data, epochs):
    """PyTorch eager, one seed, in a fresh interpreter (this file with --torch-worker)."""
    cmd = [sys.executable, "-m", "rnnjax.bench_train", "--torch-worker",
           "--data", str(data), "--epochs", str(epochs)]
    proc, wall = run_timed(cmd)
    job = json.loads(proc.stdout.splitlines()[-1])
    return row("PyTorch eager", 1, wall, job["job_s"], job["train_ppl"], job["val_ppl"])


def run_rnnjax(data, epochs, seeds):
    """rnnjax's d2l experiment with `seeds` vmapped seeds and a cold compilation cache."""
    with tempfile.TemporaryDirectory() as run_dir, tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "RNNJAX_DATA": str(data.parent)}
        cmd = [sys.executable, "-c", "from rnnjax.sweep import main; main()",
               "+experiment=d2l_rnn_scratch",
               f"seeds={seeds}", f"train.epochs={epochs}", f"hydra.run.dir={run_dir}"]
        _, wall = run_timed(cmd, env)
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    if summary["status"] != "ok":
        print(f"  warning: rnnjax run status {summary['status']!r}", flush=True)
    training = summary["training"]
    return row(f"rnnjax ({seeds} seed{'s' * (seeds > 1)})", seeds, wall, summary["wall_time_s"],
               training["final_train_ppl"], training["final_val_ppl"])


# ---------------------------------------------------------------- report

def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    import jax  # here, not at the top: the PyTorch worker should not pay for importing it

    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_device_kind": jax.devices()[0].device_kind,
        "torch": torch.__version__ if torch else None,
        "load_average_1min_at_start": os.getloadavg()[0],  # other work skews the timings
    }


COLUMNS = [("name", "name", "{}"), ("seeds", "seeds", "{}"),
           ("wall s (process)", "process_s", "{:.1f}"), ("job s", "job_s", "{:.1f}"),
           ("train ppl", "train_ppl", "{:.2f}"), ("val ppl", "val_ppl", "{:.2f}"),
           ("s per seed", "s_per_seed", "{:.1f}")]


def table(rows):
    """Plain-text table: names left-aligned, numbers right-aligned."""
    cells = [[h for h, _, _ in COLUMNS]]
    cells += [["-" if r[k] is None else f.format(r[k]) for _, k, f in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths, strict=True)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ratios(torch_row, rnnjax1, rnnjax3):
    return {
        "PyTorch eager (1 seed) / rnnjax (1 seed)": torch_row["process_s"] / rnnjax1["process_s"],
        "PyTorch eager x3 seeds (extrapolated: 3 x one-seed time) / rnnjax (3 seeds vmapped)":
            3 * torch_row["process_s"] / rnnjax3["process_s"],
    }


def write_json(obj, path):
    """Writes `obj` as JSON to `path` atomically (a temporary file, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- main

def data_file(arg):
    """--data (a directory holding timemachine.txt, or the file), else where rnnjax finds it
    ($RNNJAX_DATA, else its download cache)."""
    if arg is not None:
        p = Path(arg).expanduser()
        return (p / DATA_FILE if p.is_dir() else p).resolve()
    from rnnjax.tasks import timemachine_path

    return timemachine_path(None).resolve()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Times training d2l's RNN language model from scratch (d2l 9.5): an "
        "independent PyTorch eager rewrite of d2l's code (1 seed) against rnnjax's "
        "d2l_rnn_scratch experiment (1 and 3 seeds, cold JAX compilation cache). Prints a "
        "table and the speed ratios, and writes them with the machine's details as JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="The Time Machine text: timemachine.txt or a directory "
                        "holding it (default: $RNNJAX_DATA/timemachine.txt, else rnnjax's "
                        "download cache)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs, on both sides")
    parser.add_argument("--skip-torch", action="store_true", help="run rnnjax only")
    parser.add_argument("--out", type=Path, default=Path("results") / "bench_train.json",
                        help="the JSON results file")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data = data_file(args.data)
    if not args.data.is_file():
        parser.error(f"no text file at {args.data}: pass --data")
    if args.data.name != DATA_FILE:
        parser.error(f"rnnjax reads $RNNJAX_DATA/{DATA_FILE}: name the file {DATA_FILE}")
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if torch is None and not args.skip_torch:
        print(INSTALL_HINT)
        sys.exit(2)
    if args.torch_worker:
        print(json.dumps(train_torch(args.data, args.epochs)))
        return

    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['cpu_count']} cores, jax {machine['jax']} "
          f"({machine['jax_device_kind']}), torch {machine['torch']}, load average "
          f"{machine['load_average_1min_at_start']:.2f}", flush=True)
    rows = []
    if not args.skip_torch:
        print(f"running PyTorch eager (1 seed, {args.epochs} epochs)...", flush=True)
        rows.append(run_torch(args.data, args.epochs))
        print(f"  done in {rows[-1]['process_s']:.1f} s", flush=True)
    for seeds in (1, 3):
        print(f"running rnnjax ({seeds} seed(s), {args.epochs} epochs, cold compilation "
              "cache)...", flush=True)
        rows.append(run_rnnjax(args.data, args.epochs, seeds))
        print(f"  done in {rows[-1]['process_s']:.1f} s", flush=True)

    print()
    print(table(rows))
    speedups = {} if args.skip_torch else ratios(*rows)
    if speedups:
        print("\nspeed ratios (process wall time, rnnjax compilation included):")
        for name, value in speedups.items():
            print(f"  {name}: {value:.2f}x")
    write_json({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
                "load_average_1min_at_end": os.getloadavg()[0], "epochs": args.epochs,
                "data": str(args.data), "results": rows, "ratios": speedups}, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
