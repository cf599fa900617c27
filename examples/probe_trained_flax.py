"""Probe a Flax model trained outside rnnjax: how ||dL/dH_t|| changes with training.

A Flax NNX GRU with a linear head learns to recall the token `lag` steps back; before and after
training, `rnnjax.flax_cell` hands its very parameters to `rnnjax.probe`, which measures the
gradient of the last step's loss with respect to every hidden state H_t.

    .venv/bin/python examples/probe_trained_flax.py --steps 200

Needs flax (pip install 'rnnjax[flax]').
"""

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import rnnjax


def batch(key, vocab: int, batch_size: int, seq_len: int, lag: int):
    """(x, y): random tokens and the token `lag` steps back (y[:, t] = x[:, t - lag])."""
    x = jax.random.randint(key, (batch_size, seq_len), 0, vocab)
    return x, jnp.roll(x, lag, axis=1)


def main(steps: int = 200, vocab: int = 8, hidden: int = 32, seq_len: int = 24, lag: int = 3,
         batch_size: int = 32, seed: int = 0) -> dict:
    """Trains `steps` Adam steps and returns {step: rnnjax.ProbeReport} at 0 and `steps`."""
    rngs = nnx.Rngs(seed)
    model = (nnx.GRUCell(in_features=vocab, hidden_features=hidden, rngs=rngs),
             nnx.Linear(hidden, vocab, rngs=rngs))
    graphdef, weights = nnx.split(model)
    x, y = batch(jax.random.key(seed + 1), vocab, batch_size, seq_len, lag)

    def loss(weights, x, y):  # the loss at the last step, as the probe's loss_at="last"
        gru, head = nnx.merge(graphdef, weights)
        h = jnp.zeros((x.shape[0], hidden))
        h, _ = jax.lax.scan(lambda h, x_t: gru(h, jax.nn.one_hot(x_t, vocab)), h, x.T)
        return optax.softmax_cross_entropy_with_integer_labels(head(h), y[:, -1]).mean()

    opt = optax.adam(3e-3)

    @jax.jit
    def train_step(weights, state, key):
        xb, yb = batch(key, vocab, batch_size, seq_len, lag)
        grads = jax.grad(loss)(weights, xb, yb)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(weights, updates), state

    def measure(weights):
        gru, head = nnx.merge(graphdef, weights)
        cell, params = rnnjax.flax_cell(gru, readout=head)
        return rnnjax.probe(cell, params, x, y, loss_at="last")

    reports = {0: measure(weights)}
    state = opt.init(weights)
    for k in jax.random.split(jax.random.key(seed + 2), steps):
        weights, state = train_step(weights, state, k)
    reports[steps] = measure(weights)
    return reports


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=24)
    parser.add_argument("--lag", type=int, default=3)
    args = parser.parse_args()
    for step, out in main(steps=args.steps, seq_len=args.seq_len, lag=args.lag).items():
        g = out.frame.set_index("steps_back").grad_norm
        back = (0, args.lag, 2 * args.lag, args.seq_len - 1)
        print(f"step {step:4d}: loss {float(out.loss):.3f}; ||dL/dH_t|| at steps back "
              + ", ".join(f"{s}: {g[s]:.2e}" for s in back))
