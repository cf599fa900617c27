"""The parallel scan in time (`probe.scan=parallel`, rnnjax.core.scan) against the sequential
one, for every registered cell with a linear form: the probe's norms and loss agree to 1e-12
relative in float64 and the float32 parallel scan with the float64 sequential one to 1e-5 (the
loss over all steps, truncated BPTT); training's loss and gradient agree to 1e-11 (randomized
BPTT);
each cell's linear form reproduces its step. The sequential probe itself is held to float64
numpy references in each cell's own tests, so this chains the parallel scan to them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir

from rnnjax.app.config import register_configs
from rnnjax.app.validate import ConfigError, validate
from rnnjax.core.cells import CELLS, registry
from rnnjax.core.probes import make_probe
from rnnjax.core.scan import linear_recurrence, resolve_scan
from rnnjax.core.train import LOSSES, bptt_scale

register_configs()
D, H, Q, B, T = 5, 3, 4, 2, 14
TRUNCATE = 5


def settings():
    """(cell name, options) of every registered cell with a linear form, and the log-space
    variants of those that have the option."""
    out = []
    for name, spec in CELLS.items():
        if name in ("custom", "flax", "equinox"):
            continue  # they wrap a user's cell: none of the package's has a linear form
        if registry.build(name, {}).linear is None:
            continue
        out.append((name, {}))
        if "log_space" in spec.options:
            out.append((name, {"log_space": True}))
    return out


SETTINGS = settings()
IDS = [f"{n}-log" if o else n for n, o in SETTINGS]


def setup(name, log_space, dtype):
    cell = registry.build(name, {"log_space": True} if log_space else {})
    return cell, cell.init(jax.random.PRNGKey(0), D, H, Q, dtype)


X = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, D)
Y = jax.random.randint(jax.random.PRNGKey(2), (B, T), 0, Q)


@functools.cache
def probes():
    """Every setting's probe in one compiled call (compilations are most of this file's time):
    by both scans in float64, and by the parallel scan in float32 on the same parameters
    rounded to float32; the loss over all steps with truncated BPTT (every step's loss
    gradient and the truncation factors)."""
    cases = {(n, bool(o)): setup(n, bool(o), jnp.float64) for n, o in SETTINGS}

    def run(params):
        out = {}
        for key, (cell, _) in cases.items():
            for scan, dtype in (("sequential", jnp.float64), ("parallel", jnp.float64),
                                ("parallel", jnp.float32)):
                p = jax.tree.map(lambda v, dtype=dtype: v.astype(dtype), params[key])
                out[(key, scan, dtype.dtype.name)] = make_probe(
                    cell, "all", scan=scan, truncate=TRUNCATE)(p, X, Y)
        return out

    return jax.tree.map(np.asarray, jax.jit(run)({k: v[1] for k, v in cases.items()}))


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    finite = np.isfinite(a)
    return np.max(np.abs(10 ** (a[finite] - b[finite]) - 1), initial=0.0)


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("name, options", SETTINGS, ids=IDS)
def test_parallel_probe_equals_sequential(name, options, dtype, tol):
    """float64: the two scans agree to 1e-12. float32: the parallel scan agrees with the
    float64 sequential one to 1e-5 (the sequential scan's own float32 rounding is held to
    float64 references in the cells' tests), so the two float32 scans agree to about that."""
    out = probes()
    key = (name, bool(options))
    seq, par = out[(key, "sequential", "float64")], out[(key, "parallel", dtype)]
    assert np.isfinite(seq.log10_grad_norm).all()
    assert relative(seq.log10_grad_norm, par.log10_grad_norm) < tol
    assert relative(seq.log10_param_grad_norm, par.log10_param_grad_norm) < tol
    assert abs(seq.loss - par.loss) <= tol * abs(seq.loss)
    assert not par.overflow.any() and par.forward_overflow_t == 0


@pytest.mark.parametrize("name, options", SETTINGS, ids=IDS)
def test_linear_form_is_the_step(name, options):
    cell, params = setup(name, bool(options), jnp.float64)
    s = jax.tree.map(lambda v: v + 0.3, cell.initial_state(params, B))  # a positive state
    a, b = cell.linear(params, X[:, 3])
    if cell.linear_log:
        want = jax.tree.map(lambda a, b, s: jnp.exp(jnp.logaddexp(a + jnp.log(s), b)), a, b, s)
    else:
        want = jax.tree.map(lambda a, b, s: a * s + b, a, b, s)
    step = cell.step(params, s, X[:, 3])
    for u, v in zip(jax.tree.leaves(step), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-13, atol=1e-15)


@functools.cache
def train_grads():
    """Training's loss and gradient by both scans, float64, in one compiled call: the loss over
    all steps with randomized BPTT's factors."""
    cases = {(n, bool(o)): setup(n, bool(o), jnp.float64) for n, o in SETTINGS}
    scale = bptt_scale(jax.random.PRNGKey(3), T, "randomized", 4, jnp.float64)

    def run(params):
        def loss(p, key, scan):
            return LOSSES[scan](cases[key][0], "tokens", "all", p, X, Y, None, scale)

        return {(key, scan): jax.value_and_grad(loss)(params[key], key, scan)
                for key in cases for scan in ("sequential", "parallel")}

    return jax.jit(run)({k: v[1] for k, v in cases.items()})


@pytest.mark.parametrize("name, options", SETTINGS, ids=IDS)
def test_training_gradient_equals_sequential(name, options):
    out = train_grads()
    (v1, g1), (v2, g2) = (out[((name, bool(options)), scan)] for scan in ("sequential", "parallel"))
    assert abs(v1 - v2) <= 1e-12 * abs(v1)
    for u, v in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(v, u, rtol=1e-11, atol=1e-14 * np.abs(u).max())


def test_linear_recurrence_analytic():
    """h_t = a h_{t-1} + b with constant a, b: h_t = a^t h_0 + b (1 - a^t) / (1 - a), and the
    log-space composition gives the same for positive a, b, h_0."""
    t = np.arange(1, 41)[:, None]
    a, b, h0 = np.array([0.9, 0.5]), np.array([0.2, 1.5]), np.array([2.0, 0.25])
    want = a**t * h0 + b * (1 - a**t) / (1 - a)
    A, Bs = jnp.broadcast_to(a, (40, 2)), jnp.broadcast_to(b, (40, 2))
    both = jax.jit(lambda A, Bs, h0: (linear_recurrence(A, Bs, h0),
                                      linear_recurrence(jnp.log(A), jnp.log(Bs), h0, log=True)))
    for got in both(A, Bs, jnp.asarray(h0)):
        np.testing.assert_allclose(got, want, rtol=1e-13)


def test_scan_option_errors():
    vanilla = registry.build("vanilla", {})
    assert resolve_scan(vanilla, None) == "sequential"
    linear = setup(SETTINGS[0][0], False, jnp.float64)[0]
    assert resolve_scan(linear, None, "cpu") == "sequential"  # measured faster there
    assert resolve_scan(linear, None, "cuda") == "parallel"
    assert resolve_scan(vanilla, None, "cuda") == "sequential"
    with pytest.raises(ValueError, match="probe.scan=parallel needs a cell"):
        resolve_scan(vanilla, "parallel")
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["probe.scan=parallel", "cell=gru"])
        with pytest.raises(ConfigError, match=r"^probe.scan=parallel needs .* cell=gru is not"):
            validate(cfg)
        assert validate(compose("config", overrides=["probe.scan=parallel", "cell=lru"]))
        cfg = compose("config", overrides=["probe.scan=parallel", "cell=lru", "model.layers=2"])
        with pytest.raises(ConfigError, match=r"^probe.scan=parallel runs one layer: a stack"):
            validate(cfg)
