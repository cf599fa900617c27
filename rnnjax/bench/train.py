"""Benchmark: wall time of training d2l's RNN language model from scratch, PyTorch vs rnnjax.

The model and training (identical on every side) are d2l's section 9.5 ("RNN implementation
from scratch"): a character-level tanh RNN language model on The Time Machine (28 tokens,
32 steps, 32 hidden units, every weight matrix N(0, 0.01^2), biases zero), batch 1024, SGD
lr 1, global-norm gradient clipping at 1, 100 epochs over the first 10000 windows (each epoch
in a fresh random order; 10 steps, the last one of 784 windows).

Every side does the same logging work, as rnnjax's `d2l_rnn_scratch` does it
(`train.log_every` = 10 steps, one epoch): every 10 steps the loss on the 5000 validation
windows and the gradient profile ||dL/dH_t|| and ||H_{t-1}^T dL/dA_t|| (t = 1..32) of one fixed
batch of 1024 training windows; that profile also before training; and d2l's
predict('time traveller ', 50) at the end.

The contenders run one after another, each as its own process, one seed each unless said:

  PyTorch scratch   d2l's from-scratch model written as fast as plain PyTorch eager gets: a
                    Python loop over the 32 steps (the input row lookup `W_xh[X]`, which
                    equals d2l's one-hot product), the read-out of all steps as one product,
                    `F.cross_entropy`, `clip_grad_norm_`, `torch.optim.SGD`; no DataLoader (a
                    `randperm` per epoch indexes the windows). `--torch-threads` threads.
  PyTorch nn.RNN    d2l 9.6's concise model: `torch.nn.RNN` (one fused C++ call for the
                    recurrence) on one-hot inputs, its hidden bias frozen at 0 so that the
                    model is the same (one bias), and a linear read-out.
  PyTorch compiled  (with --torch-compile) the scratch model's loss under `torch.compile`.
  rnnjax            `+experiment=d2l_rnn_scratch seeds=1` (and seeds=3, the seeds vmapped into
                    one compiled program), each with an empty JAX compilation cache, so
                    compilation is part of the time.

"process s" is the process's wall clock, Python and library imports included (the median of
`--repeats` runs, taken in turns so that a change of the machine's load meanwhile touches every
contender alike); "job s" is the time the job measures itself (imports excluded). Ratios divide
a PyTorch process time (times 3 for three seeds, trained one after another) by rnnjax's.
Perplexities are exp of the mean loss over the last 10 training steps and over the validation
set (rnnjax: summary.json's final_train_ppl and final_val_ppl, the mean over seeds).

Usage: rnnjax bench-train [--epochs 100] [--repeats 1] [--torch-threads 1 2]
           [--torch-models scratch rnn] [--torch-compile] [--rnnjax-seeds 1 3] [--data PATH]
           [--skip-torch] [--out FILE]
       (or python experiments/bench_train.py ...)

The JSON goes to a new file under results/runs/bench_train/ (git-ignored) unless --out names
one: `rnnjax bench-train --out results/bench_train.json` is the one command that replaces the
repository's reference.
"""

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rnnjax.bench.common import (
    RUNS,
    TORCH_HINT,
    busy_warning,
    default_out,
    git_state,
    import_torch,
    last_json_line,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    output_file,
    run_timed,
    write_json,
)

DATA_FILE = "timemachine.txt"

# d2l 9.5's settings, and rnnjax's d2l_rnn_scratch logging interval (one epoch)
NUM_STEPS, NUM_HIDDENS, BATCH_SIZE, LR, GRAD_CLIP, SIGMA = 32, 32, 1024, 1.0, 1.0, 0.01
NUM_TRAIN, NUM_VAL = 10000, 5000
LOG_EVERY = 10
SAMPLE_PREFIX, SAMPLE_LENGTH = "time traveller ", 50
SEED = 0
TORCH_MODELS = {"scratch": "PyTorch scratch", "rnn": "PyTorch nn.RNN",
                "compiled": "PyTorch compiled"}


# ---------------------------------------------------------------- PyTorch (d2l 9.5, 9.6)

def load_timemachine(torch, path):
    """d2l's TimeMachine: letters only, lower case, characters as tokens, vocab of the sorted
    distinct tokens plus <unk>. Returns X, Y (the first NUM_TRAIN + NUM_VAL windows of
    NUM_STEPS + 1 token ids, X the first NUM_STEPS of each and Y shifted by one) and the
    vocabulary."""
    text = re.sub("[^A-Za-z]+", " ", Path(path).read_text(encoding="utf-8")).lower()
    vocab = sorted(set(["<unk>"] + list(text)))
    index = {t: i for i, t in enumerate(vocab)}
    corpus = torch.tensor([index[t] for t in text])
    windows = corpus.unfold(0, NUM_STEPS + 1, 1)[: NUM_TRAIN + NUM_VAL]  # windows[i] starts at i
    return windows[:, :-1], windows[:, 1:], vocab


class TorchRNN:
    """d2l's RNNLMScratch: H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h), O_t = H_t W_hq + b_q.

    `model="scratch"` runs the recurrence as a Python loop over time; `model="rnn"` runs it in
    `torch.nn.RNN` (W_ih = W_xh^T on one-hot inputs, the hidden bias frozen at 0). Both start
    from the same N(0, 0.01^2) weights and train the same five tensors.
    """

    def __init__(self, torch, vocab_size, model):
        self.torch, self.F, self.V, self.model = torch, torch.nn.functional, vocab_size, model
        H = NUM_HIDDENS
        self.W_xh = (torch.randn(vocab_size, H) * SIGMA).requires_grad_()
        self.W_hh = (torch.randn(H, H) * SIGMA).requires_grad_()
        self.b_h = torch.zeros(H, requires_grad=True)
        self.W_hq = (torch.randn(H, vocab_size) * SIGMA).requires_grad_()
        self.b_q = torch.zeros(vocab_size, requires_grad=True)
        if model == "rnn":
            self.rnn = torch.nn.RNN(vocab_size, H)
            with torch.no_grad():
                self.rnn.weight_ih_l0.copy_(self.W_xh.T)
                self.rnn.weight_hh_l0.copy_(self.W_hh.T)
                self.rnn.bias_ih_l0.zero_()
                self.rnn.bias_hh_l0.zero_()
            self.rnn.bias_hh_l0.requires_grad_(False)
            self.recurrent = [self.rnn.weight_ih_l0, self.rnn.weight_hh_l0, self.rnn.bias_ih_l0]
        else:
            self.recurrent = [self.W_xh, self.W_hh, self.b_h]

    def parameters(self):
        return [*self.recurrent, self.W_hq, self.b_q]

    def weights(self):
        """(W_xh, W_hh, b_h) in the scratch model's layout."""
        if self.model == "rnn":
            w_ih, w_hh, b = self.recurrent
            return w_ih.T, w_hh.T, b
        return tuple(self.recurrent)

    def states(self, X, h=None):
        """X: (B, T) token ids. Returns the states H_1..H_T as a list of (B, H) tensors (the
        scratch loop, whatever the model: the probe differentiates with respect to each)."""
        W_xh, W_hh, b_h = self.weights()
        h = self.torch.zeros(X.shape[0], NUM_HIDDENS) if h is None else h
        hs = []
        for drive in W_xh[X.T] + b_h:  # (B, H) per step: the row lookup X_t W_xh
            h = self.torch.tanh(drive + h @ W_hh)
            hs.append(h)
        return hs

    def logits(self, X):
        """X: (B, T) token ids. Returns the logits (T, B, V)."""
        if self.model == "rnn":
            hs, _ = self.rnn(self.F.one_hot(X.T, self.V).float())
        else:
            hs = self.torch.stack(self.states(X))
        return hs @ self.W_hq + self.b_q

    def loss(self, logits, Y):
        """Cross-entropy averaged over every token of the batch."""
        return self.F.cross_entropy(logits.reshape(-1, self.V), Y.T.reshape(-1))


def torch_profile(torch, net, X, Y):
    """rnnjax's probe, as a PyTorch user computes it: the total derivatives dL/dH_t
    (`torch.autograd.grad` with respect to every state), ||dL/dH_t||_F and step t's share of
    dL/dW_hh, ||H_{t-1}^T dL/dA_t||_F with dL/dA_t = dL/dH_t (1 - H_t^2). Returns both (T,)."""
    hs = net.states(X)
    loss = net.loss(torch.stack(hs) @ net.W_hq + net.b_q, Y)
    g = torch.stack(torch.autograd.grad(loss, hs))  # (T, B, H)
    H = torch.stack(hs).detach()
    dA = g * (1 - H * H)
    prev = torch.cat([torch.zeros_like(H[:1]), H[:-1]])
    return g.flatten(1).norm(dim=1), (prev.transpose(1, 2) @ dA).flatten(1).norm(dim=1)


def torch_sample(torch, net, vocab):
    """d2l's predict(SAMPLE_PREFIX, SAMPLE_LENGTH): warm up on the prefix, then greedy."""
    index = {t: i for i, t in enumerate(vocab)}
    with torch.no_grad():
        toks = [index[c] for c in SAMPLE_PREFIX]
        h = net.states(torch.tensor([toks]))[-1]
        out = []
        for _ in range(SAMPLE_LENGTH):
            tok = int((h @ net.W_hq + net.b_q).argmax())
            out.append(tok)
            h = net.states(torch.tensor([[tok]]), h)[-1]
    return SAMPLE_PREFIX + "".join(vocab[i] for i in out)


def train_torch(path, epochs, model, threads):
    """Trains d2l's RNN LM with PyTorch; returns the job time and the final perplexities."""
    torch = import_torch()
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    X, Y, vocab = load_timemachine(torch, path)
    Xt, Yt, Xv, Yv = X[:NUM_TRAIN], Y[:NUM_TRAIN], X[NUM_TRAIN:], Y[NUM_TRAIN:]
    net = TorchRNN(torch, len(vocab), "scratch" if model == "compiled" else model)
    params = net.parameters()
    opt = torch.optim.SGD(params, lr=LR)

    def loss_of(X, Y):
        return net.loss(net.logits(X), Y)

    if model == "compiled":
        loss_of = torch.compile(loss_of)
    probe = torch.randint(NUM_TRAIN, (BATCH_SIZE,))
    profiles = [torch_profile(torch, net, Xt[probe], Yt[probe])]
    val_losses, step = [], 0
    for _ in range(epochs):
        order = torch.randperm(NUM_TRAIN)
        train_losses = []
        for b in range(0, NUM_TRAIN, BATCH_SIZE):
            idx = order[b:b + BATCH_SIZE]
            loss = loss_of(Xt[idx], Yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            train_losses.append(loss.item())
            step += 1
            if step % LOG_EVERY == 0:
                with torch.no_grad():
                    val_losses.append(net.loss(net.logits(Xv), Yv).item())
                profiles.append(torch_profile(torch, net, Xt[probe], Yt[probe]))
    sample = torch_sample(torch, net, vocab)
    last = train_losses[-LOG_EVERY:] if len(train_losses) >= LOG_EVERY else train_losses
    return {"job_s": time.perf_counter() - start,
            "train_ppl": math.exp(sum(last) / len(last)), "val_ppl": math.exp(val_losses[-1]),
            "threads": torch.get_num_threads(), "profiles": len(profiles), "sample": sample,
            "torch": torch.__version__}


# ---------------------------------------------------------------- the contenders

def row(name, seeds, threads, process_s, job_s, train_ppl, val_ppl):
    return {"name": name, "seeds": seeds, "threads": threads, "process_s": process_s,
            "job_s": job_s, "train_ppl": train_ppl, "val_ppl": val_ppl}


def run_torch(data, epochs, model, threads):
    """A PyTorch contender, in a fresh interpreter (this module with --torch-worker)."""
    cmd = [sys.executable, "-m", "rnnjax.bench.train", "--torch-worker", model,
           "--torch-threads", str(threads), "--data", str(data), "--epochs", str(epochs)]
    proc, wall = run_timed(cmd)
    job = last_json_line(proc.stdout)
    return row(TORCH_MODELS[model], 1, job["threads"], wall, job["job_s"], job["train_ppl"],
               job["val_ppl"]) | {"sample": job["sample"]}


def run_rnnjax(data, epochs, seeds):
    """rnnjax's d2l experiment with `seeds` vmapped seeds and a cold compilation cache."""
    with tempfile.TemporaryDirectory() as run_dir, tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "RNNJAX_DATA": str(data.parent)}
        cmd = [sys.executable, "-c", "from rnnjax.sweeps.app import main; main()",
               "+experiment=d2l_rnn_scratch",
               f"seeds={seeds}", f"train.epochs={epochs}", f"hydra.run.dir={run_dir}"]
        _, wall = run_timed(cmd, env)
        summary = json.loads(Path(run_dir, "summary.json").read_text())
    if summary["status"] != "ok":
        print(f"  warning: rnnjax run status {summary['status']!r}", flush=True)
    training = summary["training"]
    return row("rnnjax", seeds, None, wall, summary["wall_time_s"], training["final_train_ppl"],
               training["final_val_ppl"]) | {"sample": training.get("sample")}


def contenders(args):
    """(key, label, run()) of every contender, in the order they take turns."""
    out = []
    if not args.skip_torch:
        models = list(args.torch_models) + ["compiled"] * args.torch_compile
        for model in models:
            for threads in args.torch_threads:
                out.append((f"{model}/{threads}", f"{TORCH_MODELS[model]}, {threads} thread"
                            + "s" * (threads > 1),
                            lambda m=model, t=threads: run_torch(args.data, args.epochs, m, t)))
    for seeds in args.rnnjax_seeds:
        out.append((f"rnnjax/{seeds}", f"rnnjax, {seeds} seed" + "s" * (seeds > 1),
                    lambda s=seeds: run_rnnjax(args.data, args.epochs, s)))
    return out


def median_row(runs):
    """One contender's row: the median process and job times of its runs, the range, and the
    perplexities of its first run (the same computation every time)."""
    first = runs[0]
    return first | {"process_s": statistics.median(r["process_s"] for r in runs),
                    "process_s_runs": [r["process_s"] for r in runs],
                    "job_s": statistics.median(r["job_s"] for r in runs),
                    "s_per_seed": statistics.median(r["process_s"] for r in runs) / first["seeds"]}


def ratios(rows):
    """The fastest PyTorch eager contender (one seed) against rnnjax with 1 and with 3 seeds."""
    eager = [r for r in rows if r["name"] in (TORCH_MODELS["scratch"], TORCH_MODELS["rnn"])]
    out = {}
    if not eager:
        return out
    fastest = min(eager, key=lambda r: r["process_s"])
    out["fastest_pytorch_eager"] = f"{fastest['name']}, {fastest['threads']} thread(s)"
    for r in rows:
        if r["name"] == "rnnjax":
            out[f"pytorch_eager_x{r['seeds']}_over_rnnjax_{r['seeds']}_seeds"] = (
                r["seeds"] * fastest["process_s"] / r["process_s"])
    return out


def table(rows):
    """A markdown table of the contenders."""
    rnnjax1 = next((r for r in rows if r["name"] == "rnnjax" and r["seeds"] == 1), None)
    head = ["contender", "threads", "seeds", "process s (median)", "runs", "job s", "train ppl",
            "val ppl", "/ rnnjax 1 seed"]
    body = []
    for r in rows:
        per = (r["process_s"] / r["seeds"] / rnnjax1["process_s"] if rnnjax1 else None)
        body.append([r["name"], "-" if r["threads"] is None else r["threads"], r["seeds"],
                     f"{r['process_s']:.1f}", " ".join(f"{s:.1f}" for s in r["process_s_runs"]),
                     f"{r['job_s']:.1f}", f"{r['train_ppl']:.2f}", f"{r['val_ppl']:.2f}",
                     "-" if per is None else f"{per:.2f}x per seed"])
    return markdown_table(head, body, [False] + [True] * 8)


# ---------------------------------------------------------------- main

def data_file(arg):
    """--data (a directory holding timemachine.txt, or the file), else where rnnjax finds it
    ($RNNJAX_DATA, else its download cache)."""
    if arg is not None:
        p = Path(arg).expanduser()
        return (p / DATA_FILE if p.is_dir() else p).resolve()
    from rnnjax.core.tasks import timemachine_path

    return timemachine_path(None).resolve()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Times training d2l's RNN language model from scratch (d2l 9.5), with "
        "the same validation and gradient-profile logging on every side: PyTorch eager (a "
        "scratch loop over time and torch.nn.RNN; 1 and 2 threads) against rnnjax's "
        "d2l_rnn_scratch experiment (1 and 3 seeds, cold JAX compilation cache). Prints a "
        "table and the speed ratios, and writes them with the machine's details as JSON.")
    parser.add_argument("--data", help="The Time Machine text: timemachine.txt or a directory "
                        "holding it (default: $RNNJAX_DATA/timemachine.txt, else rnnjax's "
                        "download cache)")
    parser.add_argument("--epochs", type=int, default=100,
                        help="epochs, on every side (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each contender, taken in turns (default: %(default)s)")
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[1, 2],
                        help="PyTorch intra-op threads, torch.set_num_threads (default: 1 2)")
    parser.add_argument("--torch-models", nargs="+", default=["scratch", "rnn"],
                        choices=["scratch", "rnn"],
                        help="PyTorch eager contenders (default: scratch rnn)")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also the scratch model under torch.compile")
    parser.add_argument("--rnnjax-seeds", type=int, nargs="+", default=[1, 3],
                        help="rnnjax runs, by number of vmapped seeds (default: 1 3)")
    parser.add_argument("--skip-torch", action="store_true", help="run rnnjax only")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help=f"the JSON results file (default: a new file under {RUNS}/"
                        "bench_train/, git-ignored; `--out results/bench_train.json` replaces "
                        "the repository's reference)")
    parser.add_argument("--torch-worker", choices=sorted(TORCH_MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("epochs", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if min(args.torch_threads + args.rnnjax_seeds) < 1:
        parser.error("--torch-threads and --rnnjax-seeds must be >= 1")
    from rnnjax.core.tasks import DataError

    try:
        args.data = data_file(args.data)
    except DataError as e:  # offline, and the text is nowhere rnnjax looks
        parser.error(f"{e}; or pass --data")
    if not args.data.is_file():
        parser.error(f"no text file at {args.data}: pass --data")
    if args.data.name != DATA_FILE:
        parser.error(f"rnnjax reads $RNNJAX_DATA/{DATA_FILE}: name the file {DATA_FILE}")
    if not args.torch_worker:  # a worker writes no file
        args.out = output_file(parser, args.out, default_out("bench_train"))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.torch_worker:
        print(json.dumps(train_torch(args.data, args.epochs, args.torch_worker,
                                     args.torch_threads[0])))
        return
    torch = None if args.skip_torch else import_torch()
    if torch is None and not args.skip_torch:
        print(TORCH_HINT)
        sys.exit(2)

    machine = machine_info(torch)
    print(machine_line(machine), flush=True)
    runs = {}
    loads = [machine["load_average_at_start"][0]]
    for r in range(args.repeats):
        for key, label, run in contenders(args):
            print(f"[{r + 1}/{args.repeats}] {label}, {args.epochs} epochs...", end="", flush=True)
            runs.setdefault(key, []).append(run())
            loads.append(load_average()[0])
            print(f" {runs[key][-1]['process_s']:.1f} s (load {loads[-1]:.2f})", flush=True)
    rows = [median_row(v) for v in runs.values()]
    speedups = ratios(rows)

    print()
    print(table(rows))
    if speedups:
        print(f"\nfastest PyTorch eager: {speedups['fastest_pytorch_eager']}; its process time "
              "(times the seeds) over rnnjax's, compilation included:")
        for k, v in speedups.items():
            if k != "fastest_pytorch_eager":
                print(f"  {k}: {v:.2f}x")
    warning = busy_warning(loads)
    if warning:
        print(warning)
    write_json({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
                "git": git_state(), "load_average_1min_during": loads,
                "load_average_at_end": load_average(), "epochs": args.epochs,
                "repeats": args.repeats, "data": str(args.data), "results": rows,
                "ratios": speedups}, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
