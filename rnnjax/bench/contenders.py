"""The benchmark's contenders on one network and batch: d2l's tanh RNN with its inputs,
rnnjax's probe, a d2l-style JAX Python loop and PyTorch eager, and how each is compiled,
called first and timed (`rnnjax.bench.probe` runs them)."""

import os
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.bench.common import summary, time_calls
from rnnjax.core.cells import RNNParams, vanilla
from rnnjax.core.cells.vanilla import init_params
from rnnjax.core.init import normal
from rnnjax.core.probes import make_probe

VOCAB, STD, SEED = 28, 0.01, 0
LOSS_AT = ("all", "last")
FEWER_REPEATS_FROM_T = 4096  # at least this long: at most 3 timed calls


# ---------------------------------------------------------------- inputs

@partial(jax.jit, static_argnames=("B", "H", "T"))
def make_inputs(key, B, H, T):
    """d2l's normal(0.01) network and a batch of random tokens with next-token targets.

    Returns:
      params: RNNParams, W_xh (28, H), W_hh (H, H), b_h (H,), W_hq (H, 28), b_q (28,).
      x, y: (B, T) int32.
    """
    k_params, k_tokens = jax.random.split(key)
    params = init_params(k_params, normal(STD), normal(STD), VOCAB, H, VOCAB)
    tokens = jax.random.randint(k_tokens, (B, T + 1), 0, VOCAB, dtype=jnp.int32)
    return params, tokens[:, :-1], tokens[:, 1:]


def stacked_inputs(S, B, H, T):
    """Networks and batches of seeds SEED..SEED+S-1 stacked on a leading axis, as a sweep runs
    them (stacked on the host: one compiled make_inputs per shape, whatever S)."""
    each = [make_inputs(jax.random.key(SEED + s), B=B, H=H, T=T) for s in range(S)]
    return jax.tree.map(lambda *a: jnp.asarray(np.stack(a)), *each)


def rnnjax_probe(loss_at="all", unroll=None):
    """rnnjax's probe of the vanilla tanh RNN (unroll None: the backend's default)."""
    return make_probe(vanilla("tanh"), loss_at, unroll=unroll)


# ---------------------------------------------------------------- JAX Python loop (d2l style)

def loop_probe(params: RNNParams, x, y):
    """grad_norm (T,) from a Python loop over time, unrolled by jit (d2l's JAX scratch RNN).

    dL/dH_t is the gradient with respect to a zero perturbation added to H_t; the perturbations
    are T separate (B, H) arrays, so that each gradient is one output, not a slice of one array.
    """
    B, T = x.shape
    H = params.W_hh.shape[0]
    inputs = params.W_xh[x.T]  # (T, B, H): row lookups, the one-hot product X_t W_xh

    def loss_fn(perturbations):
        h = jnp.zeros((B, H), params.W_hh.dtype)
        outputs = []
        for X, dH in zip(inputs, perturbations, strict=True):
            h = jnp.tanh(X + h @ params.W_hh + params.b_h) + dH
            outputs.append(h @ params.W_hq + params.b_q)
        logits = jnp.stack(outputs)  # (T, B, Q)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y.T).mean()

    zeros = tuple(jnp.zeros((B, H), params.W_hh.dtype) for _ in range(T))
    grads = jax.grad(loss_fn)(zeros)
    return jnp.stack([jnp.sqrt(jnp.sum(jnp.square(g))) for g in grads])


# ---------------------------------------------------------------- PyTorch eager

def torch_device(torch):
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_inputs(torch, params, x, y):
    """The same network and batch as PyTorch tensors; the weights are leaves requiring grad."""
    dev = torch_device(torch)
    p = {k: torch.tensor(np.asarray(v), device=dev, requires_grad=True)
         for k, v in params._asdict().items()}
    x, y = (torch.tensor(np.asarray(a), dtype=torch.long, device=dev) for a in (x, y))
    return p, x, y


def torch_probe(torch, p, x, y):
    """grad_norm (T,) as a PyTorch user computes it: retain_grad on every H_t, then backward."""
    F = torch.nn.functional
    B = x.shape[0]
    h = torch.zeros(B, p["W_hh"].shape[0], device=x.device)
    states, outputs = [], []
    for X in p["W_xh"][x.T]:  # (B, H) per step: the row lookup X_t W_xh
        h = torch.tanh(X + h @ p["W_hh"] + p["b_h"])
        h.retain_grad()
        states.append(h)
        outputs.append(h @ p["W_hq"] + p["b_q"])
    logits = torch.stack(outputs)  # (T, B, Q)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.T.reshape(-1))
    for v in p.values():
        v.grad = None
    loss.backward()
    return torch.stack([s.grad for s in states]).flatten(1).norm(dim=1)


def torch_sync(torch):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- timing

def compile_jax(fn, *args):
    """jax.jit(fn) compiled for args; returns (compiled, trace + lower s, compile s)."""
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lowered_at - start, time.perf_counter() - lowered_at


def grad_norm_of(out):
    """grad_norm (T,) in float64 from a ProbeResult (log10 norms) or a plain array."""
    if hasattr(out, "log10_grad_norm"):
        return 10.0 ** np.asarray(out.log10_grad_norm, np.float64)
    return np.asarray(out, np.float64)


class Prepared:
    """One implementation, ready to be timed: a call that blocks until its result is ready,
    the fields measured while preparing it (compile time, the first call), and its grad_norm."""

    def __init__(self, call, fields, grad_norm):
        self.call, self.fields, self.grad_norm = call, fields, grad_norm


def prepare_jax(fn, args):
    """Compiles fn for args and makes the first call."""
    compiled, lower_s, compile_s = compile_jax(fn, *args)
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    first_s = time.perf_counter() - start
    return Prepared(lambda: jax.block_until_ready(compiled(*args)),
                    {"compile_s": lower_s + compile_s, "trace_lower_s": lower_s,
                     "xla_compile_s": compile_s, "first_call_s": first_s}, grad_norm_of(out))


def prepare_torch(torch, params, x, y):
    """The PyTorch inputs and the first call."""
    torch.set_num_threads(os.cpu_count())
    p, tx, ty = torch_inputs(torch, params, x, y)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    def call():
        norms = torch_probe(torch, p, tx, ty)
        torch_sync(torch)
        return norms

    start = time.perf_counter()
    out = call()
    fields = {"compile_s": None, "first_call_s": time.perf_counter() - start,
              "device": str(tx.device), "threads": torch.get_num_threads()}
    return Prepared(call, fields, out.detach().cpu().double().numpy())


def timed(prepared, runs, flops):
    """A prepared implementation's fields with its timed calls."""
    s = summary(runs)
    return prepared.fields | s | {"gflops": flops / s["run_s_median"] / 1e9}


def max_rel_diff(a, ref):
    """max_t |a_t - ref_t| / |ref_t|."""
    return float(np.max(np.abs(a - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)))


def matmul_rate(n, repeats, torch=None):
    """Measured dense float32 n x n matmul rate in GFLOP/s: jitted JAX, and PyTorch's."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul).lower(a, a).compile()
    jax.block_until_ready(f(a, a))
    median = statistics.median(time_calls(lambda: jax.block_until_ready(f(a, a)), repeats))
    out = {"n": n, "jax_s_median": median, "jax_gflops": 2 * n**3 / median / 1e9}
    if torch is not None:
        torch.set_num_threads(os.cpu_count())
        ta = torch.tensor(np.asarray(a), device=torch_device(torch))

        def call():
            ta @ ta
            torch_sync(torch)

        call()
        median = statistics.median(time_calls(call, repeats))
        out |= {"torch_s_median": median, "torch_gflops": 2 * n**3 / median / 1e9}
    return out
