"""The Python door (`rnnjax.probe`, `rnnjax.flax_cell`, `rnnjax.equinox_cell`): held to plain
autodiff through the unrolled sequence (tests/adapter_reference.py), on one network and on S,
on models trained here with optax; and the docs page "Probe your own cell"
(docs/custom-cells.md), whose Python snippets are run here and whose commands run through the
Hydra app in-process."""

import re
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from adapter_reference import reference
from conftest import ROOT

import rnnjax
from rnnjax.core.cells import registry, unroll
from rnnjax.core.cells.gru import RECURRENT

B, T, D, H, Q = 2, 5, 4, 3, 4


def gru_call(cell):
    """call(recurrent, (h, p), x_t) -> (h, p) of `reference`: the GRU's step, its recurrent
    matrices given (each step its own copy) and its other parameters p carried unchanged, so
    that one `call` (one compiled reference) serves every network."""
    return lambda rec, carry, xt: (cell.step(carry[1]._replace(**rec), carry[0], xt), carry[1])


def gru_reference(call, p, x, y, loss_at):
    """(grad_norm, param_grad_norm) of one GRU network by autodiff through the sequence, each
    step with its own copy of the recurrent matrices."""
    return reference(call, (jnp.zeros((B, H), jnp.float64), p),
                     {k: getattr(p, k) for k in RECURRENT}, (p.W_hq, p.b_q),
                     jax.nn.one_hot(x, D, dtype=jnp.float64), y, loss_at, hidden_index=0)[:2]


@pytest.mark.parametrize("loss_at", ["last", "all"])
@pytest.mark.e2e
def test_probe_of_one_and_of_several_networks_matches_autodiff(loss_at):
    cell = registry.build("gru", {})
    S = 3
    params = jax.vmap(lambda k: cell.init(k, D, H, Q, jnp.float64))(
        jax.random.split(jax.random.key(0), S))
    params = params._replace(b_z=params.b_z + 0.3, b_h=params.b_h - 0.2)  # non-zero biases
    x = jax.random.randint(jax.random.key(1), (B, T), 0, D)
    y = jax.random.randint(jax.random.key(2), (B, T), 0, Q)
    out = rnnjax.probe(cell, params, x, y, loss_at=loss_at).with_seeds([10, 11, 12])
    assert out.grad_norm.shape == out.param_grad_norm.shape == (S, T) and out.loss.shape == (S,)
    call = gru_call(cell)
    for s in range(S):
        one = jax.tree.map(lambda a, s=s: a[s], params)
        want_g, want_pg = gru_reference(call, one, x, y, loss_at)
        np.testing.assert_allclose(out.grad_norm[s], want_g, rtol=1e-10, atol=0)
        np.testing.assert_allclose(out.param_grad_norm[s], want_pg, rtol=1e-10, atol=0)
        single = rnnjax.probe(cell, one, x, y, loss_at, networks=False)
        assert single.grad_norm.shape == (T,)
        np.testing.assert_allclose(single.grad_norm, want_g, rtol=1e-10, atol=0)
        if s == 0:  # one network found from the shapes (traced each time: one network's do)
            found = rnnjax.probe(cell, one, x, y, loss_at=loss_at)
            assert found.grad_norm.shape == (T,)
            np.testing.assert_array_equal(found.grad_norm, single.grad_norm)
    assert not np.allclose(out.grad_norm[0], out.grad_norm[1])  # each network its own


@pytest.mark.e2e
def test_frame_is_tidy_with_the_harness_columns():
    cell = registry.build("lstm", {})
    params = jax.vmap(lambda k: cell.init(k, D, H, Q))(jax.random.split(jax.random.key(0), 2))
    x = jax.random.randint(jax.random.key(1), (B, T), 0, D)
    out = rnnjax.probe(cell, params, x, x).with_seeds([7, 9])
    df = out.frame
    assert list(df.columns[:8]) == ["network", "seed", "t", "T", "steps_back", "grad_norm",
                                    "param_grad_norm", "cell_grad_norm"]
    assert {"underflow", "overflow", "forward_overflow", "train_step"} <= set(df.columns)
    assert len(df) == 2 * T
    np.testing.assert_array_equal(df.network, np.repeat([0, 1], T))
    np.testing.assert_array_equal(df.seed, np.repeat([7, 9], T))
    np.testing.assert_array_equal(df.steps_back, df["T"] - df.t)
    np.testing.assert_array_equal(df.grad_norm, out.grad_norm.ravel())
    np.testing.assert_array_equal(df.cell_grad_norm, out.taps["cell"].ravel())
    np.testing.assert_allclose(np.log10(out.grad_norm), out.log10.log10_grad_norm, rtol=1e-6)


def test_regression_targets_give_the_squared_error_of_the_last_output():
    cell = registry.build("vanilla", {})
    params = cell.init(jax.random.key(0), 2, H, 1, jnp.float64)
    x = jax.random.normal(jax.random.key(1), (B, T, 2), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (B,), jnp.float64)
    out = rnnjax.probe(cell, params, x, y)  # real y: kind=regression
    _, o = unroll(cell, params, x)
    assert out.loss == pytest.approx(float(jnp.mean((o[-1, :, 0] - y) ** 2)), rel=1e-12)


def test_bad_calls_say_what_is_wrong():
    cell = registry.build("gru", {})
    params = cell.init(jax.random.key(0), D, H, Q)
    x = jax.random.randint(jax.random.key(1), (B, T), 0, D)
    with pytest.raises(ValueError, match=r"^seeds: 1 labels expected"):
        rnnjax.probe(cell, params, x, x).with_seeds([1, 2])
    with pytest.raises(ValueError, match=r"probe.loss_at='first' is unknown"):
        rnnjax.probe(cell, params, x, x, loss_at="first")
    with pytest.raises(TypeError):  # inputs of the wrong size for either reading of params
        rnnjax.probe(cell, params, jnp.ones((B, T, D + 1)), x)


def tokens():
    x = jax.random.randint(jax.random.key(3), (B, T), 0, D)
    return x, jnp.roll(x, 1, axis=1)  # recall the previous token


@pytest.mark.e2e
def test_an_equinox_model_trained_elsewhere_is_probed_in_a_few_lines():
    eqx = pytest.importorskip("equinox", reason="rnnjax.equinox_cell needs equinox")
    k1, k2 = jax.random.split(jax.random.key(0))
    model = (eqx.nn.GRUCell(D, H, key=k1, dtype=jnp.float64),
             eqx.nn.Linear(H, Q, key=k2, dtype=jnp.float64))
    x, y = tokens()

    def loss(model):  # the batch-mean loss at the last step
        gru, head = model
        h = jnp.zeros((B, H), jnp.float64)
        for t in range(T):
            h = jax.vmap(gru)(jax.nn.one_hot(x[:, t], D, dtype=jnp.float64), h)
        return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(head)(h), y[:, -1]).mean()

    opt = optax.adam(0.05)

    @eqx.filter_jit  # compiled once (eagerly, every op of every step is dispatched on its own)
    def train_step(model, state):
        updates, state = opt.update(eqx.filter_grad(loss)(model), state)
        return eqx.apply_updates(model, updates), state

    state = opt.init(eqx.filter(model, eqx.is_array))
    value = eqx.filter_jit(loss)
    before = value(model)
    for _ in range(5):
        model, state = train_step(model, state)
    assert value(model) < before  # it trained

    cell, params = rnnjax.equinox_cell(model[0], readout=model[1])
    out = rnnjax.probe(cell, params, x, y)
    assert out.loss == pytest.approx(float(value(model)), rel=1e-12)  # the trained model's
    arrays, static = eqx.partition(model[0], eqx.is_array)
    want_g, want_pg, _ = reference(
        lambda tr, h, xt: jax.vmap(eqx.combine(tr, static))(xt, h),
        jnp.zeros((B, H), jnp.float64), arrays, (model[1].weight.T, model[1].bias),
        jax.nn.one_hot(x, D, dtype=jnp.float64), y, "last")
    np.testing.assert_allclose(out.grad_norm, want_g, rtol=1e-10, atol=0)
    np.testing.assert_allclose(out.param_grad_norm, want_pg, rtol=1e-10, atol=0)


@pytest.mark.e2e
def test_a_flax_model_trained_elsewhere_is_probed_in_a_few_lines():
    pytest.importorskip("flax", reason="rnnjax.flax_cell needs flax")
    from flax import nnx

    f64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
    rngs = nnx.Rngs(0)
    lstm = nnx.LSTMCell(in_features=D, hidden_features=H, rngs=rngs, **f64)
    head = nnx.Linear(H, Q, rngs=rngs, **f64)
    x, y = tokens()
    graphdef, weights = nnx.split((lstm, head))

    def loss(weights):
        lstm, head = nnx.merge(graphdef, weights)
        carry = (jnp.zeros((B, H)), jnp.zeros((B, H)))
        for t in range(T):
            carry, h = lstm(carry, jax.nn.one_hot(x[:, t], D, dtype=jnp.float64))
        return optax.softmax_cross_entropy_with_integer_labels(head(h), y[:, -1]).mean()

    opt = optax.sgd(0.5)

    @jax.jit  # compiled once (eagerly, every op of every step is dispatched on its own)
    def train_step(weights, state):
        updates, state = opt.update(jax.grad(loss)(weights), state)
        return optax.apply_updates(weights, updates), state

    state = opt.init(weights)
    value = jax.jit(loss)
    before = value(weights)
    for _ in range(5):
        weights, state = train_step(weights, state)
    assert value(weights) < before
    lstm, head = nnx.merge(graphdef, weights)

    cell, params = rnnjax.flax_cell(lstm, readout=head)
    out = rnnjax.probe(cell, params, x, y)
    assert out.loss == pytest.approx(float(value(weights)), rel=1e-12)
    zeros = jnp.zeros((B, H), jnp.float64)
    want_g, want_pg, _ = reference(
        lambda tr, c, xt: nnx.merge(nnx.graphdef(lstm), tr)(c, xt)[0], (zeros, zeros),
        nnx.state(lstm), (head.kernel[...], head.bias[...]),
        jax.nn.one_hot(x, D, dtype=jnp.float64), y, "last", hidden_index=1)  # carry (c, h)
    np.testing.assert_allclose(out.grad_norm, want_g, rtol=1e-10, atol=0)
    np.testing.assert_allclose(out.param_grad_norm, want_pg, rtol=1e-10, atol=0)


# ------------------------------------------------------- docs' page "Probe your own cell"

def readme_section() -> str:
    """The docs' page "Probe your own cell" (README.md's section before the docs site)."""
    return (ROOT / "docs" / "custom-cells.md").read_text()


def snippets(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", readme_section(), re.S)


@pytest.fixture
def my_pkg(tmp_path, monkeypatch):
    """The docs' my_pkg/cells.py, importable."""
    (files,) = [s for s in snippets("python") if s.startswith("# my_pkg/cells.py\n")]
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "cells.py").write_text(files)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.e2e
def test_readme_python_snippets_run(my_pkg, capsys):
    pytest.importorskip("flax", reason="the docs' Flax snippet needs flax")
    pytest.importorskip("equinox", reason="the docs' Equinox snippet needs equinox")
    blocks = [s for s in snippets("python") if not s.startswith("# my_pkg/")]
    assert len(blocks) == 3
    for code in blocks:
        exec(compile(code, "docs/custom-cells.md", "exec"), {"__name__": "readme"})  # noqa: S102
    printed = capsys.readouterr().out
    assert printed.startswith("(4, 20)\n")
    from my_pkg.cells import make_cell  # the custom cell also works in Python
    cell = make_cell(0.3)
    p = cell.init(jax.random.key(0), D, H, Q, jnp.float64)
    x = jax.random.randint(jax.random.key(1), (B, T), 0, D)
    out = rnnjax.probe(cell, p, x, x, loss_at="all")
    want_g, want_pg, _ = reference(
        lambda rec, h, xt: cell.step(p._replace(**rec), h, xt), jnp.zeros((B, H), jnp.float64),
        {"W_hh": p.W_hh}, (p.W_hq, jnp.zeros(Q)), jax.nn.one_hot(x, D, dtype=jnp.float64), x,
        "all")
    np.testing.assert_allclose(out.grad_norm, want_g, rtol=1e-10)
    np.testing.assert_allclose(out.param_grad_norm, want_pg, rtol=1e-10)


TINY = ["hidden_size=3", "batch_size=2", "seeds=1", "seq_len=5"]


def commands() -> list[list[str]]:
    """The `rnnjax run` commands of the section, as argument lists (environment dropped)."""
    out = []
    for block in snippets("bash"):
        for line in block.splitlines():
            words = shlex.split(line)
            while words and "=" in words[0] and not words[0].startswith(("cell", "-")):
                words = words[1:]  # PYTHONPATH=. and the like
            if words[:2] == ["rnnjax", "run"]:
                out.append(words[2:])
    return out


def test_readme_commands_are_the_ones_promised():
    assert commands() == [
        ["cell=custom", "cell.target=my_pkg.cells:make_cell", "cell.leak=0.3"],
        ["cell=flax", "cell.module=GRUCell"],
        ["cell=flax", "cell.api=linen", "cell.module=MGUCell"],
        ["cell=equinox", "cell.module=LSTMCell"]]


@pytest.mark.e2e
@pytest.mark.parametrize("argv", commands(), ids=lambda a: ",".join(a))
def test_readme_commands_run(app, my_pkg, argv):
    library = argv[0].removeprefix("cell=")
    if library in ("flax", "equinox"):
        pytest.importorskip(library, reason=f"cell={library} needs {library}")
    r = app(*argv, *TINY, "hydra.run.dir=run")
    assert r.code == 0, r.err
    df = rnnjax.load_sweep(my_pkg / "run")
    assert set(df.cell) == {library} and len(df) == 5
    assert np.all(np.isfinite(df.grad_norm)) and np.all(df.grad_norm > 0)


@pytest.mark.e2e
def test_example_probe_trained_flax_runs():
    pytest.importorskip("flax", reason="examples/probe_trained_flax.py needs flax")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "probe_trained_flax", ROOT / "examples" / "probe_trained_flax.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    reports = example.main(steps=3, vocab=D, hidden=H, seq_len=T, lag=1, batch_size=B)
    assert sorted(reports) == [0, 3]
    for out in reports.values():
        assert out.grad_norm.shape == (T,) and np.all(np.isfinite(out.grad_norm))
        assert len(out.frame) == T
    assert not np.allclose(reports[0].grad_norm, reports[3].grad_norm)  # it trained
