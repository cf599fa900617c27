import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import pair_cell as _pair_cell
from jax.extend.core import jaxprs_in_params
from numpy_bptt import bptt
from references import make_time_grads, tokens

from rnnjax.app.results import log10_slope
from rnnjax.core.cells import ACTIVATIONS, log10_norm, vanilla
from rnnjax.core.cells.vanilla import init_params, log10_outer_norm
from rnnjax.core.init import gaussian, orthogonal, xavier
from rnnjax.core.probes import DEFAULT_UNROLL, default_unroll, make_probe

CASES = list(itertools.product(sorted(ACTIVATIONS), ["all", "last"]))


def cell(act, path="fast"):
    """The vanilla cell with its own fast backward step, or with the generic jax.vjp one."""
    c = vanilla(act)
    return c if path == "fast" else c._replace(backward=None)


def norms(res):
    """(grad_norm, param_grad_norm) of a ProbeResult as float64 numbers."""
    return (10.0 ** np.asarray(res.log10_grad_norm, np.float64),
            10.0 ** np.asarray(res.log10_param_grad_norm, np.float64))


GAIN = {"tanh": 1.3, "sigmoid": 1.3, "relu": 1.1, "linear": 0.8}


@functools.partial(jax.jit, static_argnames=("D", "H", "Q", "dtype"))
def random_net(key, D=7, H=5, Q=7, gain=1.3, dtype=jnp.float64):
    """A random network with non-zero biases, scaled so gradients neither vanish nor explode.
    (Jitted, with the gain traced: one program per size, not an eager one per operation.)"""
    k_p, k_b1, k_b2 = jax.random.split(key, 3)
    p = init_params(k_p, gaussian(gain), xavier(), D, H, Q, dtype)
    return p._replace(b_h=0.3 * jax.random.normal(k_b1, (H,), dtype),
                      b_q=0.3 * jax.random.normal(k_b2, (Q,), dtype))


def as_numpy(p):
    return {k: np.asarray(v) for k, v in p._asdict().items()}


def cast(p, dtype):
    """p's arrays converted to dtype on the host (eager, each leaf's conversion compiled)."""
    return jax.tree.map(lambda a: np.asarray(a).astype(dtype), p)


# The linear cell's probe with the loss at the last step, jitted once for the tests that use it
LINEAR_LAST = jax.jit(make_probe(vanilla("linear"), "last"))


def _bptt_cases():
    """Every activation and loss at (B, H) = (3, 5) by the fast backward step; B > H (the fast
    step's other norm path) and the generic step for two of them in the default run, the rest
    with `-m slow`."""
    for B, H, path in [(3, 5, "fast"), (6, 4, "fast"), (3, 5, "generic")]:
        for act, loss_at in CASES:
            default = (path == "fast" and B < H
                       or (act, loss_at) in (("tanh", "all"), ("relu", "last")))
            yield pytest.param(act, loss_at, B, H, path, marks=() if default else pytest.mark.slow,
                               id=f"{B}-{H}-{path}-{act}-{loss_at}")


@pytest.mark.parametrize("act,loss_at,B,H,path", list(_bptt_cases()))
@pytest.mark.e2e
def test_probe_matches_numpy_bptt(key, act, loss_at, B, H, path):
    # B <= H and B > H take different norm paths in the fast backward step
    k_net, k_tok = jax.random.split(key)
    T, V = 11, 7
    p = random_net(k_net, D=V, H=H, Q=V, gain=GAIN[act])
    x, y = tokens(k_tok, B, T, V)
    res = jax.jit(make_probe(cell(act, path), loss_at))(p, x, y)
    loss, dH, dA, h_prev, _ = bptt(as_numpy(p), np.asarray(x), np.asarray(y), act, loss_at)
    want_g = np.sqrt((dH**2).sum(axis=(1, 2)))
    want_pg = np.array([np.linalg.norm(h_prev[t].T @ dA[t]) for t in range(T)])
    assert res.log10_grad_norm.dtype == jnp.float64
    got_g, got_pg = norms(res)
    np.testing.assert_allclose(res.loss, loss, rtol=1e-10)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(got_pg, want_pg, rtol=1e-8, atol=1e-14)
    assert not res.overflow.any() and int(res.forward_overflow_t) == 0
    # a comparison of all-zero gradients could not fail
    assert want_g[-1] > 0 and (want_g > 0).sum() >= T // 2
    if loss_at == "last":  # only the last step carries loss: the profile must vary
        assert want_g[0] != pytest.approx(want_g[-1], rel=1e-3)


@pytest.mark.parametrize("act,loss_at", [
    c if c[0] in ("tanh", "relu") else pytest.param(*c, marks=pytest.mark.slow) for c in CASES])
@pytest.mark.e2e
def test_step_contributions_sum_to_w_hh_gradient(key, act, loss_at):
    k_net, k_tok = jax.random.split(key)
    p = random_net(k_net)
    x, y = tokens(k_tok, 4, 9, 7)
    time_grads = make_time_grads(act, loss_at)

    probes = [make_probe(cell(act, path), loss_at) for path in ("fast", "generic")]

    @jax.jit  # one program (eager, every operation was compiled on its own)
    def run(p, x, y):
        g = time_grads(p, x, y)
        h_prev = jnp.concatenate([jnp.zeros_like(g.hs[:1]), g.hs[:-1]])
        contributions = jnp.einsum("tbi,tbj->tij", h_prev, g.dL_dA)  # (T, H, H)
        grad = jax.grad(lambda W_hh: time_grads(p._replace(W_hh=W_hh), x, y).loss)(p.W_hh)
        return contributions, grad, [probe(p, x, y) for probe in probes]

    contributions, grad, results = run(p, x, y)
    contributions = np.asarray(contributions)
    np.testing.assert_allclose(contributions.sum(0), grad, rtol=1e-10, atol=1e-14)
    for res in results:  # the fast and the generic backward step
        np.testing.assert_allclose(norms(res)[1], np.linalg.norm(contributions, axis=(1, 2)),
                                   rtol=1e-10)


@pytest.mark.parametrize("rho", [0.5, 0.9, 1.0, 1.1])
@pytest.mark.e2e
def test_linear_orthogonal_slope_is_log_rho(key, rho):
    """Linear RNN, W_hh = rho * orthogonal, loss at the last step: dL/dH_t = dL/dH_T (W^T)^(T-t),
    so ||dL/dH_t|| = rho^(T-t) ||dL/dH_T|| exactly: log10 slope per step back = log10 rho."""
    T = 40
    # the gain traced: one program for every rho
    p = jax.jit(lambda k, r: init_params(k, orthogonal(r), xavier(), 6, 16, 6, jnp.float64))(
        key, rho)
    x, y = tokens(jax.random.fold_in(key, 1), 4, T, 6)
    g = norms(LINEAR_LAST(p, x, y))[0]
    np.testing.assert_allclose(g, g[-1] * rho ** (T - np.arange(1, T + 1)), rtol=1e-9)
    assert log10_slope(g)[0] == pytest.approx(np.log10(rho), abs=1e-10)


@pytest.mark.parametrize("loss_at", ["all", "last"])
@pytest.mark.e2e
def test_unrolling_changes_nothing_but_the_schedule(key, loss_at):
    """probe.unroll (steps per scan iteration, also one that does not divide T) and the
    backend's default give the same numbers; the default is DEFAULT_UNROLL's entry."""
    p = random_net(key)
    x, y = tokens(jax.random.fold_in(key, 1), 3, 11, 7)
    want = jax.jit(make_probe(cell("tanh"), loss_at, unroll=1))(p, x, y)
    for unroll in (None, 4):
        got = jax.jit(make_probe(cell("tanh"), loss_at, unroll=unroll))(p, x, y)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    assert default_unroll() == DEFAULT_UNROLL["gpu" if jax.default_backend() == "gpu" else "cpu"]
    assert default_unroll("cuda") == default_unroll("gpu") == DEFAULT_UNROLL["gpu"] >= 1
    assert default_unroll("cpu") == DEFAULT_UNROLL["cpu"] >= 1


@pytest.mark.e2e
def test_vmapped_seeds_equal_per_seed_loop(key):
    keys = jax.random.split(key, 5)
    ps = jax.vmap(lambda k: random_net(k, dtype=jnp.float32))(keys)
    x, y = jax.vmap(lambda k: tokens(k, 3, 8, 7))(jax.random.split(jax.random.fold_in(key, 9), 5))
    probe = make_probe(vanilla("tanh"), "all")
    batched = jax.jit(jax.vmap(probe))(ps, x, y)
    per_seed = jax.jit(probe)  # one compilation for the loop (eager, each call compiled anew)
    ps, x, y = jax.tree.map(np.asarray, (ps, x, y))  # sliced on the host, not op by op
    for s in range(5):
        one = per_seed(jax.tree.map(lambda a, s=s: a[s], ps), x[s], y[s])
        np.testing.assert_allclose(batched.log10_grad_norm[s], one.log10_grad_norm, atol=3e-6)
        np.testing.assert_allclose(batched.log10_param_grad_norm[s], one.log10_param_grad_norm,
                                   atol=3e-6)
        np.testing.assert_allclose(batched.loss[s], one.loss, rtol=1e-6)
    # different seeds are different networks
    assert not np.allclose(batched.log10_grad_norm[0], batched.log10_grad_norm[1])


def test_float32_computes_in_float32_and_agrees_with_float64(key):
    p64 = random_net(key)
    p32 = cast(p64, np.float32)
    x, y = tokens(jax.random.fold_in(key, 2), 3, 10, 7)
    probe = jax.jit(make_probe(vanilla("sigmoid"), "last"))
    r32, r64 = probe(p32, x, y), probe(p64, x, y)
    assert r32.log10_grad_norm.dtype == jnp.float32 and r64.log10_grad_norm.dtype == jnp.float64
    np.testing.assert_allclose(norms(r32)[0], norms(r64)[0], rtol=1e-4)
    assert not np.array_equal(norms(r32)[0], norms(r64)[0])


def test_log10_norm_survives_float32_underflow_and_overflow():
    for scale in (1e-30, 1e25):
        v = jnp.full((3, 4), scale, jnp.float32)
        assert 10 ** float(log10_norm(v)) == pytest.approx(scale * np.sqrt(12), rel=1e-5)
        naive = jnp.sqrt(jnp.sum(v**2))
        # what the scaling avoids: squares underflow to 0 or overflow to inf
        assert naive == 0 if scale < 1 else np.isposinf(naive)
    assert float(log10_norm(jnp.zeros((2, 2), jnp.float32))) == -np.inf
    # several leaves, complex entries by modulus
    tree = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4j])}
    assert float(log10_norm(tree)) == pytest.approx(np.log10(5.0), abs=1e-12)


def test_outer_norms_both_paths_agree(key):
    kh, kd = jax.random.split(key)
    outer_norm = jax.jit(log10_outer_norm)
    for B, H in [(2, 5), (7, 3)]:
        h = np.asarray(jax.random.normal(kh, (B, H)))
        d = 1e-30 * np.asarray(jax.random.normal(kd, (B, H)))
        want = np.linalg.norm(h.T @ (d * 1e30)) * 1e-30
        assert float(outer_norm(h, d)) == pytest.approx(np.log10(want), abs=1e-10)


def test_compiled_program_does_not_grow_with_seq_len(key):
    """The scan body is traced once: the jaxpr has the same number of equations for any T."""
    p = random_net(key)
    probe = make_probe(vanilla("tanh"), "all")

    def count(jaxpr):
        subs = [count(j.jaxpr if hasattr(j, "jaxpr") else j)
                for e in jaxpr.eqns for j in jaxprs_in_params(e.params)]
        return len(jaxpr.eqns) + sum(subs)

    def size(T):
        x = jnp.zeros((2, T), jnp.int32)
        return count(jax.make_jaxpr(probe)(p, x, x).jaxpr)

    assert size(4) == size(512) > 20


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="allowed"):
        vanilla("softsign")
    with pytest.raises(ValueError, match="allowed"):
        make_probe(vanilla("tanh"), "first")


def test_log10_norm_near_the_float32_limits():
    # Above ~1e38 the reciprocal of the scale is subnormal (flushed to zero by XLA on a CPU);
    # below ~1e-19 squares underflow. The norm must stay exact in both ranges, and beyond
    # float32's range when every entry is finite (its log10 is), inf only for an inf entry.
    norm = jax.jit(log10_norm)
    base = np.array([[1.0, 0.5], [0.25, 0.0]])
    for scale in (2e38, 1e30, 1e-20, 1e-36):
        x = jnp.asarray(base * scale, jnp.float32)
        want = np.linalg.norm(base) * np.float64(scale)
        # a float32 log10 near 38 is exact to ~4e-6 (its spacing there): 1e-5 relative in norm
        assert float(norm(x)) == pytest.approx(np.log10(want), abs=5e-6)
    big = float(norm(jnp.full((2, 2), 3e38, jnp.float32)))
    assert big == pytest.approx(np.log10(6e38), abs=5e-6)  # 6e38 > float32's max, yet exact
    assert np.isposinf(norm(jnp.array([1.0, np.inf], jnp.float32)))
    assert np.isnan(norm(jnp.array([1.0, np.nan], jnp.float32)))
    assert norm(jnp.zeros((2, 2), jnp.float32)) == -np.inf


@pytest.mark.e2e
def test_norms_beyond_float32_are_exact_and_only_a_lost_chain_is_flagged(key):
    """A linear RNN with W_hh = 2 I doubles every entry of dL/dH_t per step back, exactly. In
    float32 the norm passes float32's maximum a step or two before any entry does: those steps
    must read their exact norm (a float64 number > 3.4e38), not inf, and not be flagged; from
    the first step whose entries overflow back to t = 1 the chain is lost: inf, flagged."""
    T, B, H = 110, 4, 8
    p64 = jax.jit(lambda k: init_params(k, lambda k, s, d: 2 * jnp.eye(*s, dtype=d), xavier(),
                                        6, H, 6, jnp.float64))(key)
    # a tiny input and a large read-out: the forward pass stays finite (H_T ~ 2^T 1e-20,
    # logits ~ 1e21) while the backward chain (~ 2^(T - t) 1e8) leaves float32's range
    p64 = cast(p64, np.float64)
    p64 = p64._replace(W_xh=1e-20 * p64.W_xh, W_hq=1e8 * p64.W_hq)
    p32 = cast(p64, np.float32)
    p64 = cast(p32, np.float64)  # the very same weights
    x, y = tokens(jax.random.fold_in(key, 5), B, T, 6)
    r32 = LINEAR_LAST(p32, x, y)
    g32, g64 = norms(r32)[0], norms(LINEAR_LAST(p64, x, y))[0]
    f32_max = float(np.finfo(np.float32).max)
    assert int(r32.forward_overflow_t) == 0 and np.isfinite(float(r32.loss))
    over = np.asarray(r32.overflow)
    n = int(over.sum())
    assert 0 < n < T and over[:n].all() and not over[n:].any()
    assert np.isposinf(g32[:n]).all() and np.isfinite(g32[n:]).all()
    np.testing.assert_allclose(g32[n:], g64[n:], rtol=2e-5)
    assert g32[n:].max() > f32_max  # exact beyond float32's range, unflagged
    assert g64[n - 1] > f32_max  # where float32 lost the chain, float64 goes on


@pytest.mark.e2e
def test_step_one_share_of_w_hh_is_exactly_zero_for_many_vmapped_networks():
    """H_0 = 0, so step 1's share of dL/dW_hh is 0: log10 -inf, status ok. With 28 vmapped
    networks of H = 512 (fig3's job), XLA on a CPU read the zero Gram matrix from memory it
    never wrote: NaN in most runs, and the job said "nonfinite" (which activations did changed
    from run to run)."""
    S, B, T, H, V = 28, 16, 12, 512, 28
    cell = vanilla("tanh", "gaussian", 1.0)
    # keys of the "rbg" generator: XLA's random bit generator draws the 7 million weights in
    # half the CPU time of threefry's
    params = jax.jit(jax.vmap(lambda k: cell.init(k, V, H, V)))(
        jax.random.split(jax.random.key(0, impl="rbg"), S))
    probe = jax.jit(jax.vmap(make_probe(cell, "last")))
    for seed in range(3):  # the memory it read differed between calls
        x, y = (jax.random.randint(jax.random.key(seed * 2 + i), (S, B, T), 0, V)
                for i in range(2))
        pg = np.asarray(probe(params, x, y).log10_param_grad_norm)
        assert np.isneginf(pg[:, 0]).all(), pg[:, 0]
        assert np.isfinite(pg[:, 1:]).all()


@pytest.mark.parametrize("loss_at", ["all", "last"])
@pytest.mark.e2e
def test_a_pytree_state_with_a_three_axis_hidden_against_jax_grad(key, loss_at):
    """||dL/dH_t|| over every axis of a (B, H, 2) hidden output, and step t's share of the
    recurrent parameters' gradient, equal jax.grad of a reference that adds zero perturbations
    to every H_t and gives every step its own copy of (W_hh, a) (float64)."""
    from rnnjax.core.losses import make_loss

    cell = _pair_cell()
    B, T, V, H = 3, 9, 6, 4
    k_net, k_tok = jax.random.split(key)
    p = jax.jit(cell.init, static_argnums=(1, 2, 3))(k_net, V, H, V)
    x, y = tokens(k_tok, B, T, V)
    loss = make_loss("tokens", loss_at)

    def reference(eps, W_hh, a):  # eps (T, B, H, 2); W_hh (T, ...), a (T, H): per-step copies
        s, outs = cell.initial_state(p, B), []
        for t in range(T):
            s = cell.step(p._replace(W_hh=W_hh[t], a=a[t]), s, x[:, t])
            s = {**s, "h": s["h"] + eps[t]}
            outs.append(cell.readout(p, s))
        return loss(jnp.stack(outs) if loss_at == "all" else outs[-1][None], y)

    copies = (jnp.broadcast_to(p.W_hh, (T, *p.W_hh.shape)), jnp.broadcast_to(p.a, (T, H)))
    dH, dW, da = jax.jit(jax.grad(reference, argnums=(0, 1, 2)))(jnp.zeros((T, B, H, 2)), *copies)
    want_g = np.sqrt(np.sum(np.asarray(dH) ** 2, axis=(1, 2, 3)))
    want_pg = np.sqrt(np.sum(np.asarray(dW) ** 2, axis=(1, 2, 3, 4))
                      + np.sum(np.asarray(da) ** 2, axis=1))
    res = jax.jit(make_probe(cell, loss_at))(p, x, y)
    got_g, got_pg = norms(res)
    assert res.log10_grad_norm.dtype == jnp.float64 and np.all(want_g[:-1] > 0)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-10)
    np.testing.assert_allclose(got_pg[1:], want_pg[1:], rtol=1e-10)
    assert got_pg[0] == 0 == want_pg[0] or got_pg[0] == pytest.approx(want_pg[0], rel=1e-10)
