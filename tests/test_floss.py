"""Gradient flossing (rnnjax.core.floss): the regularizer against a float64 numpy QR iteration,
its gradient against finite differences, the analytic linear case, flossing off equals plain
training, and the config's one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnjax.core.cells import registry
from rnnjax.core.floss import Floss, floss_inputs, make_floss_loss
from rnnjax.core.train import Training, init_state, make_optimizer, make_train_chunk

H, D, K, BURN, LENGTH = 6, 3, 3, 5, 7


@pytest.fixture(scope="module")
def net():
    """A small tanh RNN above the edge of chaos (g = 2), float64, with token batches."""
    jax.config.update("jax_enable_x64", True)
    cell = registry.build("vanilla", {}, activation="tanh", init="gaussian", init_value=2.0)
    params = cell.init(jax.random.key(0), D, H, D, jnp.float64)
    x = jax.random.randint(jax.random.key(1), (2, 5), 0, D)  # (B, T): tiled to 12 steps
    loss = make_floss_loss(cell, K, LENGTH, BURN)
    return cell, params, x, jax.jit(jax.value_and_grad(loss))


def numpy_regularizer(p, x: np.ndarray) -> float:
    """sum_i lambda_i^2 by a float64 numpy QR iteration of H_t = tanh(x W_xh + H W_hh + b)."""
    W_xh, W_hh, b = (np.asarray(a, np.float64) for a in (p.W_xh, p.W_hh, p.b_h))
    lams = []
    for seq in x:
        toks = np.tile(seq, -(-(BURN + LENGTH) // len(seq)))[:BURN + LENGTH]
        h, Q, logs = np.zeros(H), np.eye(H, K), []
        for t, tok in enumerate(toks):
            h = np.tanh(W_xh[tok] + h @ W_hh + b)
            J = (1 - h**2)[:, None] * W_hh.T  # d h_t / d h_{t-1}
            Q, R = np.linalg.qr(J @ Q)
            if t >= BURN:
                logs.append(np.log(np.abs(np.diag(R))))
        lams.append(np.mean(logs, 0))
    return float(np.sum(np.mean(lams, 0) ** 2))


def test_value_matches_numpy(net):
    cell, params, x, value_and_grad = net
    value, _ = value_and_grad(params, x)
    assert float(value) == pytest.approx(numpy_regularizer(params, np.asarray(x)), rel=1e-10)


def test_gradient_matches_finite_differences(net):
    """Without a burn-in the gradient flows through every step: central differences agree
    (with one, the burn-in's steps are held fixed by design: `make_floss_exponents`)."""
    cell, params, x, _ = net
    f = jax.jit(make_floss_loss(cell, K, LENGTH, 0))
    grads = jax.grad(f)(params, x)
    eps = 1e-6
    rng = np.random.default_rng(0)
    for name in ("W_hh", "W_xh", "b_h"):
        a = getattr(params, name)
        for _ in range(2):
            idx = tuple(int(rng.integers(n)) for n in a.shape)
            up = params._replace(**{name: a.at[idx].add(eps)})
            down = params._replace(**{name: a.at[idx].add(-eps)})
            fd = (float(f(up, x)) - float(f(down, x))) / (2 * eps)
            assert float(getattr(grads, name)[idx]) == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_linear_orthogonal_analytic(net):
    """A linear RNN with W_hh = rho * orthogonal: every exponent is log rho per step."""
    cell = registry.build("vanilla", {}, activation="linear", init="orthogonal",
                          init_value=0.7)
    params = cell.init(jax.random.key(2), D, H, D, jnp.float64)
    x = net[2]
    value = make_floss_loss(cell, K, LENGTH, BURN)(params, x)
    assert float(value) == pytest.approx(K * np.log(0.7) ** 2, rel=1e-10)


def test_floss_inputs_tile_and_cut():
    x = jnp.arange(6).reshape(2, 3)
    assert floss_inputs(x, 8).tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    assert floss_inputs(x, 4).tolist() == [0, 1, 2, 3]


def test_weight_zero_and_off_equal_plain_training(net):
    """Flossing with weight 0 adds exactly 0 to every gradient: the same parameters as no
    flossing; and `Training` without floss is the plain step (its default)."""
    cell, params, x, _ = net
    tx = make_optimizer("adam", 1e-2, 1.0)

    def batch(key, step):
        xs = jax.random.randint(jax.random.fold_in(key, step), (2, 5), 0, D)
        return xs, xs, jnp.ones((2,))

    def run(floss):
        chunk = jax.jit(make_train_chunk(Training(cell, "all", "tokens", tx, batch, 3, 3,
                                                  clip=1.0, floss=floss)))
        return chunk(init_state(params, tx), jax.random.key(3), jnp.asarray(0))[0].params

    plain = run(None)
    zero = run(Floss(K, 0.0, 1, LENGTH, BURN))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(zero), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    flossed = run(Floss(K, 1.0, 1, LENGTH, BURN))
    assert not np.array_equal(np.asarray(flossed.W_hh), np.asarray(plain.W_hh))


@pytest.mark.parametrize("override, words", [
    ("train.floss.k=-1", "train.floss.k=-1 is invalid"),
    ("train.floss.k=99", "train.floss.k=99 is invalid with hidden_size"),
    ("train.floss.weight=-1", "train.floss.weight=-1.0 is invalid"),
    ("train.floss.every=0", "train.floss.every=0 is invalid"),
    ("train.floss.length=0", "train.floss.length=0 is invalid"),
])
def test_config_errors_are_one_line(override, words):
    from hydra import compose, initialize_config_dir

    from rnnjax.app.config import register_configs
    from rnnjax.app.validate import ConfigError, validate
    from rnnjax.sweeps.app import CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["train.steps=20", "hidden_size=8", "train.floss.k=2",
                                           override])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_job_flossing_during_training_finishes(tmp_path):
    """Regression: with train.floss.every set, each interval's measuring (its Lyapunov
    spectrum) ran beside the next training chunk (its QR iteration), and at these sizes the two
    waited on each other in XLA forever on a 2-core CPU. Now it finishes, with the record."""
    import threading

    from helpers import compose_cfg

    from rnnjax.app.config import register_configs
    from rnnjax.app.job import run_job

    register_configs()
    cfg = compose_cfg(["init=gaussian", "init.gain=2", "task=selective_copy", "task.tokens=1",
                       "task.symbols=4", "seq_len=16", "hidden_size=32", "batch_size=8",
                       "seeds=2", "train.optimizer=adam", "train.lr=0.003", "train.steps=20",
                       "train.log_every=5", "train.floss.k=16", "train.floss.every=5"])
    done = {}
    job = threading.Thread(target=lambda: done.update(run_job(cfg, tmp_path)), daemon=True)
    job.start()
    job.join(timeout=120)
    assert not job.is_alive(), "the job hung"
    assert done["status"] == "ok" and len(done["training"]["floss"]["exponents_after"]) == 2
