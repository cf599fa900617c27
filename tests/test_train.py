import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from helpers import compose_cfg
from numpy_bptt import bptt

from rnnjax.app.config import register_configs
from rnnjax.app.job import run_job
from rnnjax.app.results import load_sweep
from rnnjax.core.cells import registry, unroll, vanilla
from rnnjax.core.cells.vanilla import init_params
from rnnjax.core.init import gaussian, make_init, xavier
from rnnjax.core.losses import make_loss
from rnnjax.core.probes import make_probe
from rnnjax.core.tasks import (
    COPY_VOCAB,
    make_adding_batch,
    make_copy_batch,
    make_random_batch,
)
from rnnjax.core.train import (
    Training,
    bptt_scale,
    init_state,
    make_eval,
    make_optimizer,
    make_train_chunk,
    sequence_loss,
)

register_configs()


def fixed_batch(x, y):
    return lambda key, i: (x, y, jnp.ones((x.shape[0],), jnp.float32))


@functools.partial(jax.jit, static_argnames=("H", "V"))
def net(key, H=6, V=5, gain=1.2):
    return init_params(key, gaussian(gain), xavier(), V, H, V, jnp.float64)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def random_batch(key, V, B, T):
    """make_random_batch(V, B, T)(key), jitted (one program, not eager operations)."""
    return make_random_batch(V, B, T)(key)


# jax.grad of the tanh network's loss (the probe's, with the loss at every step), compiled once
# for the tests that hold an optimizer's update to it (they share its sizes)
loss_grad = jax.jit(jax.grad(lambda q, x, y: make_probe(vanilla("tanh"), "all")(q, x, y).loss))


def host(tree):
    """A pytree's arrays as numpy arrays (arithmetic on the host, not eager JAX operations)."""
    return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize("clip", [None, 1e-3, 1e3])
@pytest.mark.e2e
def test_clipping_changes_the_update_exactly_as_optax_says(key, clip):
    p = net(key)
    x, y = random_batch(jax.random.fold_in(key, 1), 5, 4, 7)
    # the gradient from the independent numpy BPTT (W_hh) and jax.grad (the rest)
    g_hh = bptt({k: np.asarray(v) for k, v in p._asdict().items()}, np.asarray(x),
                np.asarray(y), "tanh", "all")[4]
    lr = 0.5
    tx = make_optimizer("sgd", lr, clip)
    chunk = jax.jit(make_train_chunk(Training(vanilla("tanh"), "all", "tokens", tx,
                                              fixed_batch(x, y), 1, 1, clip=clip)))
    state, m = chunk(jax.jit(init_state, static_argnums=1)(p, tx), key, jnp.asarray(0))
    grads, p = host(loss_grad(p, x, y)), host(p)
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads))
    np.testing.assert_allclose(grads.W_hh, g_hh, rtol=1e-9)
    factor = 1.0 if clip is None else min(1.0, clip / norm)
    for new, old, g in zip(state.params, p, grads, strict=True):
        np.testing.assert_allclose(new, old - lr * factor * g, rtol=1e-9, atol=1e-15)
    assert float(m.grad_norm[0]) == pytest.approx(norm, rel=1e-12)  # reported before clipping
    assert bool(m.clipped[0]) == (clip is not None and norm > clip)


@pytest.mark.parametrize("cell_name,kind,loss_at", [
    ("vanilla", "tokens", "all"), ("lstm", "tokens", "all"),
    pytest.param("vanilla", "tokens", "last", marks=pytest.mark.slow),
    ("vanilla", "regression", "last")])
@pytest.mark.e2e
def test_sequence_loss_is_the_loss_of_the_unrolled_outputs(key, cell_name, kind, loss_at):
    """The trainer's loss (read out inside the scan, each step's term added there) and its
    gradient equal the loss of all outputs at once, with a mask and truncated BPTT; so does the
    validation loss."""
    D, H, B, T = (5, 6, 4, 7) if kind == "tokens" else (2, 6, 4, 7)
    cell = registry.build(cell_name, {}, activation="tanh", init="normal", init_value=0.5)
    p = jax.jit(cell.init, static_argnums=(1, 2, 3, 4))(key, D, H, D if kind == "tokens" else 1,
                                                        jnp.float64)
    if kind == "tokens":
        x, y = random_batch(jax.random.fold_in(key, 1), D, B, T)
    else:
        x, y = jax.jit(make_adding_batch(B, T))(jax.random.fold_in(key, 1))
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mask = np.array([1.0, 0.0, 1.0, 1.0])
    loss = make_loss(kind, loss_at)

    @jax.jit
    def both(q):
        scale = bptt_scale(None, T, "truncated", 3, jnp.float64)
        got = jax.value_and_grad(lambda q: sequence_loss(cell, kind, loss_at, q, x, y, mask,
                                                         scale))(q)
        want = jax.value_and_grad(lambda q: loss(unroll(cell, q, x, grad_scale=scale)[1], y,
                                                 mask))(q)
        return got, want, make_eval(cell, loss_at, kind)(q, x, y), loss(unroll(cell, q, x)[1], y)

    got, want, val, val_want = both(p)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert np.abs(want[1][0]).max() > 0  # a gradient that could differ
    np.testing.assert_allclose(val, val_want, rtol=1e-12)


@pytest.mark.parametrize("clip_value", [1e-3, 0.05, 1e3])
@pytest.mark.e2e
def test_elementwise_clipping_clamps_each_entry_as_optax_clip(key, clip_value):
    p = net(key)
    x, y = random_batch(jax.random.fold_in(key, 1), 5, 4, 7)
    lr = 0.5
    tx = make_optimizer("sgd", lr, None, clip_value)
    chunk = jax.jit(make_train_chunk(Training(vanilla("tanh"), "all", "tokens", tx,
                                              fixed_batch(x, y), 1, 1, clip_value=clip_value)))
    state, m = chunk(jax.jit(init_state, static_argnums=1)(p, tx), key, jnp.asarray(0))
    grads, p = host(loss_grad(p, x, y)), host(p)
    for new, old, g in zip(state.params, p, grads, strict=True):
        np.testing.assert_allclose(new, old - lr * np.clip(g, -clip_value, clip_value),
                                   rtol=1e-9, atol=1e-15)
    biggest = max(float(np.max(np.abs(g))) for g in grads)
    assert bool(m.clipped[0]) == (biggest > clip_value)
    assert 1e-3 < biggest < 1e3  # both outcomes are tested


@pytest.mark.e2e
def test_elementwise_then_global_norm_clipping_in_that_order(key):
    p = net(key)
    x, y = random_batch(jax.random.fold_in(key, 1), 5, 4, 7)
    tx = make_optimizer("sgd", 1.0, 1e-2, 0.05)
    grads = loss_grad(p, x, y)
    clamped = jax.tree.map(lambda g: np.clip(g, -0.05, 0.05), host(grads))
    factor = min(1.0, 1e-2 / math.sqrt(sum(float(np.sum(c**2)) for c in clamped)))
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, p)
    for u, c in zip(updates, clamped, strict=True):
        np.testing.assert_allclose(u, -factor * c, rtol=1e-9, atol=1e-15)


full_probe = jax.jit(make_probe(vanilla("tanh"), "last"))


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.e2e
def test_truncated_bptt_gives_zero_gradient_across_the_cut(key, k):
    T = 13
    p = net(key)
    x, y = random_batch(jax.random.fold_in(key, 2), 5, 3, T)
    probe = jax.jit(make_probe(vanilla("tanh"), "last", truncate=k))
    g = 10 ** np.asarray(probe(p, x, y).log10_grad_norm)
    last_cut = (T - 1) // k * k  # the gradient from step last_cut + 1 never reaches H_last_cut
    assert (g[:last_cut] == 0).all()
    assert (g[last_cut:] > 0).all()
    full = 10 ** np.asarray(full_probe(p, x, y).log10_grad_norm)
    np.testing.assert_allclose(g[last_cut:], full[last_cut:], rtol=1e-12)  # same after the cut
    assert (full > 0).all()


def test_randomized_truncation_is_unbiased(key):
    k = 4
    scales = jax.vmap(lambda kk: bptt_scale(kk, 50, "randomized", k, jnp.float64))(
        jax.random.split(key, 4000))
    s = np.asarray(scales)
    assert set(np.unique(s)) == {0.0, 1 / (1 - 1 / k)}
    assert s.mean() == pytest.approx(1.0, abs=0.01)  # E[xi] = 1
    assert (s == 0).mean() == pytest.approx(1 / k, abs=0.01)  # mean truncation length k


@pytest.mark.e2e
def test_planted_divergence_stops_one_seed_only(key):
    S, T = 3, 8
    keys = jax.random.split(key, S)
    params = jax.jit(jax.vmap(lambda kk: init_params(kk, make_init("identity", 1.0), xavier(),
                                                     5, 6, 5, jnp.float32)))(keys)
    params = jax.tree.map(np.array, params)  # writable host copies
    params.W_hh[1] *= np.float32(1e30)  # seed 1 overflows
    x, y = random_batch(key, 5, 4, T)
    tx = make_optimizer("sgd", 0.1, None)
    chunk = jax.jit(jax.vmap(make_train_chunk(Training(vanilla("relu"), "all", "tokens", tx,
                                                       fixed_batch(x, y), 5, 5)),
                             in_axes=(0, 0, None)))
    state, m = chunk(jax.jit(jax.vmap(init_state, (0, None)), static_argnums=1)(params, tx),
                     keys, jnp.asarray(0))
    assert list(np.asarray(state.alive)) == [True, False, True]
    assert list(np.asarray(state.diverged_at)) == [-1, 0, -1]
    assert np.isfinite(np.asarray(m.loss)[[0, 2]]).all()
    assert np.isnan(np.asarray(m.loss)[1]).all()
    assert np.array_equal(state.params.W_hh[1], params.W_hh[1])  # frozen where it diverged
    assert not np.array_equal(state.params.W_hh[0], params.W_hh[0])  # the others trained


def test_adding_problem_matches_its_definition(key):
    T = 20
    x, y = make_adding_batch(20000, T)(key)
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == (20000, T, 2) and y.shape == (20000,)
    marks = x[..., 1]
    assert (marks.sum(1) == 2).all()
    assert (marks[:, : T // 2].sum(1) == 1).all() and (marks[:, T // 2:].sum(1) == 1).all()
    np.testing.assert_allclose(y, (x[..., 0] * marks).sum(1), rtol=1e-6)
    assert 0 <= x[..., 0].min() and x[..., 0].max() <= 1
    assert np.mean((y - 1.0) ** 2) == pytest.approx(1 / 6, abs=0.005)  # the baseline 0.167


def test_copy_problem_matches_its_definition(key):
    delay = 15
    x, y = make_copy_batch(4000, delay)(key)
    x, y = np.asarray(x), np.asarray(y)
    L = delay + 20
    assert x.shape == y.shape == (4000, L)
    data = x[:, :10]
    assert data.min() >= 1 and data.max() <= 8
    assert (x[:, 10:delay + 9] == 0).all() and (x[:, delay + 9] == COPY_VOCAB - 1).all()
    assert (x[:, delay + 10:] == 0).all()
    assert (y[:, :delay + 10] == 0).all() and (y[:, delay + 10:] == data).all()
    # the memoryless baseline: blank with certainty, then uniform over the 8 symbols
    ce = np.where(np.arange(L) < delay + 10, 0.0, math.log(8)).mean()
    assert ce == pytest.approx(10 * math.log(8) / (delay + 20), rel=1e-12)


@pytest.mark.e2e
def test_short_d2l_run_lowers_perplexity(tmp_path, timemachine_file):
    cfg = compose_cfg(["+experiment=d2l_rnn_scratch", f"task.path={timemachine_file}",
                       "seeds=2", "batch_size=256", "seq_len=16", "train.epochs=2",
                       "train.log_every=13", "hidden_size=32"])
    summary = run_job(cfg, tmp_path)
    tr = summary["training"]
    m = load_sweep(tmp_path)
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert tr["steps"] == 2 * 40  # ceil(10000 / 256) = 40 steps per epoch
    first = metrics[metrics.train_step == metrics.train_step.min()].val_ppl.mean()
    assert tr["final_val_ppl"] < 0.85 * first and tr["final_val_ppl"] < 20
    assert first < 28.5  # a fresh model is near uniform over 28 tokens
    assert set(metrics.columns) >= {"train_loss", "train_ppl", "val_loss", "val_ppl",
                                    "grad_norm_global", "clipped", "clip_fraction", "seed"}
    assert sorted(m.train_step.unique()) == [0, 13, 26, 39, 52, 65, 78, 80]
    # every profile: each seed's t = 1..T once, in order (the intervals' rows are built at once)
    for (seed, step), g in m.groupby(["seed", "train_step"], sort=False):
        assert g.t.tolist() == list(range(1, 17)), (seed, step)
    assert m.drop_duplicates(["seed", "train_step"])[["train_step", "seed"]].values.tolist() == [
        [step, seed] for step in [0, 13, 26, 39, 52, 65, 78, 80] for seed in (0, 1)]
    assert tr["sample"].startswith("time traveller ") and len(tr["sample"]) == 15 + 50
    assert summary["status"] == "ok" and tr["diverged_seeds"] == {}


@pytest.mark.e2e
def test_copy_task_records_its_T_and_uses_it(tmp_path, monkeypatch):
    """task=copy backpropagates through T = seq_len + 20 steps: the T column, the summary, the
    Lyapunov burn-in and the plots' steps back all use that T, and the seq_len column keeps
    the config value (metrics.parquet's T: test_memory's training job)."""
    from rnnjax.app import summary as summary_module
    from rnnjax.report import plots

    burn_ins = []
    real = summary_module.make_lyapunov
    monkeypatch.setattr(summary_module, "make_lyapunov",
                        lambda cell, k, burn_in, **kw: burn_ins.append(burn_in) or real(cell, k,
                                                                                  burn_in, **kw))
    cfg = compose_cfg(["task=copy", "seq_len=5", "hidden_size=6", "batch_size=2", "seeds=2"])
    summary = run_job(cfg, tmp_path)
    assert summary["T"] == 25 and burn_ins == [25 // 4]
    df = load_sweep(tmp_path)
    assert (df["T"] == 25).all() and (df.seq_len == 5).all() and df.t.max() == 25
    assert plots.job_T(df).to_dict() == {".": 25}
    fig = plots.decay_curves(df)
    xs = np.concatenate([line.get_xdata() for ax in fig.axes for line in ax.get_lines()])
    assert xs.min() == 0 and xs.max() == 24  # T - t for t = 25..1, never negative


@pytest.mark.e2e
def test_rmsprop_initial_scale_is_arjovskys_running_mean_square(key):
    """Their update: rms = 0.9 rms + 0.1 g^2 from rms = 1e-3, then p -= lr g / sqrt(rms)."""
    p = net(key)
    x, y = random_batch(jax.random.fold_in(key, 1), 5, 4, 7)
    tx = make_optimizer("rmsprop", 1e-3, None, None, initial_scale=1e-3)
    grads = loss_grad(p, x, y)
    update = jax.jit(lambda g, s, q: optax.apply_updates(q, tx.update(g, s, q)[0]))
    step_state = jax.jit(lambda g, s, q: tx.update(g, s, q)[1])
    state, params = jax.jit(tx.init)(p), p
    rms = jax.tree.map(lambda a: np.full(a.shape, 1e-3), p)
    expected = jax.tree.map(np.asarray, p)
    for _ in range(2):
        params, state = update(grads, state, params), step_state(grads, state, params)
        rms = jax.tree.map(lambda r, g: 0.9 * r + 0.1 * np.asarray(g) ** 2, rms, grads)
        expected = jax.tree.map(lambda e, g, r: e - 1e-3 * np.asarray(g) / np.sqrt(r + 1e-8),
                                expected, grads, rms)
    for a, b in zip(params, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-12)
