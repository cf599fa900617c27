"""Stacked layers (`rnnjax.core.cells.stack`, `model.layers=L`): every layer's per-timestep
total derivative ||dL/dH^l_t|| and its recurrent share, against an independent float64 numpy
BPTT of the stacked network written from the equations; the one-layer path unchanged; the
`layer` column; one job through the Hydra app; the validation line.

The reference (below, numpy only) runs the stack forward layer by layer within each step, and
backward from t = T to 1 and, within a step, from the top layer down:

    dH^l_t = [l = L] dO_t W_hq^L^T + (dH^l_{t+1} through layer l's own step t + 1)
             + (dH^{l+1}_t through layer l + 1's step t, whose input is
                O^l_t = H^l_t W_hq^l + b_q^l)

so a lower layer's norm counts the path into the layer above at the same step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from rnnjax.app.config import register_configs
from rnnjax.core.cells import registry
from rnnjax.core.cells.stack import stack
from rnnjax.core.probes import make_probe

register_configs()

B, T, H, V = 3, 12, 4, 5  # batch, steps, hidden units, tokens (inputs and outputs)
RTOL = 1e-10


# ------------------------------------------------------------------ float64 numpy reference


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def f64(p):
    return {k: np.asarray(v, np.float64) for k, v in p._asdict().items() if v is not None}


class VanillaLayer:
    """H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h); recurrent share H_{t-1}^T dA_t."""

    def __init__(self, p):
        self.p = p

    def forward(self, X, h):
        p = self.p
        return np.tanh(X @ p["W_xh"] + h @ p["W_hh"] + p["b_h"])

    def backward(self, X, h, h_new, dh):
        """(dL/dH_{t-1} through this step, dL/dX_t, the recurrent share's squared norm)."""
        p = self.p
        dA = dh * (1 - h_new**2)
        return dA @ p["W_hh"].T, dA @ p["W_xh"].T, np.sum((h.T @ dA) ** 2)


class GRULayer:
    """d2l's GRU: Z, R gates, H~ = tanh(X W_xh + (R * H) W_hh + b_h), H' = Z H + (1 - Z) H~;
    recurrent share: the gradients of W_hz, W_hr, W_hh at this step."""

    def __init__(self, p):
        self.p = p

    def _gates(self, X, h):
        p = self.p
        z = sigmoid(X @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
        r = sigmoid(X @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
        c = np.tanh(X @ p["W_xh"] + (r * h) @ p["W_hh"] + p["b_h"])
        return z, r, c

    def forward(self, X, h):
        z, r, c = self._gates(X, h)
        return z * h + (1 - z) * c

    def backward(self, X, h, h_new, dh):
        p = self.p
        z, r, c = self._gates(X, h)
        dz, dc = dh * (h - c), dh * (1 - z)
        dA_c = dc * (1 - c**2)
        drh = dA_c @ p["W_hh"].T
        dA_r = drh * h * r * (1 - r)
        dA_z = dz * z * (1 - z)
        dh_prev = dh * z + drh * r + dA_z @ p["W_hz"].T + dA_r @ p["W_hr"].T
        dX = dA_z @ p["W_xz"].T + dA_r @ p["W_xr"].T + dA_c @ p["W_xh"].T
        share = (np.sum((h.T @ dA_z) ** 2) + np.sum((h.T @ dA_r) ** 2)
                 + np.sum(((r * h).T @ dA_c) ** 2))
        return dh_prev, dX, share


def stack_bptt(layers, ps, x, y, loss_at, D):
    """Per-layer ||dL/dH^l_t|| and the norm of step t's recurrent share, each (T, L), and the
    loss, of the stack of `layers` (classes) with params `ps` (dicts) on tokens x, y (B, T) of
    D symbols."""
    L = len(ps)
    nets = [cls(p) for cls, p in zip(layers, ps, strict=True)]
    Bn, Tn = x.shape
    hs = [np.zeros((Tn + 1, Bn, p["W_hq"].shape[0])) for p in ps]  # hs[l][0] = H^l_0 = 0
    inputs = [[None] * Tn for _ in range(L)]  # what layer l read at step t
    for t in range(Tn):
        X = np.eye(D)[x[:, t]]  # one-hot tokens
        for l in range(L):
            inputs[l][t] = X
            hs[l][t + 1] = nets[l].forward(X, hs[l][t])
            X = hs[l][t + 1] @ ps[l]["W_hq"] + ps[l]["b_q"]  # the next layer's input O^l_t
    top = ps[-1]
    steps = range(Tn) if loss_at == "all" else [Tn - 1]
    n = Bn * len(steps)
    loss, dO = 0.0, np.zeros((Tn, Bn, top["W_hq"].shape[1]))
    for t in steps:
        o = hs[-1][t + 1] @ top["W_hq"] + top["b_q"]
        o = o - o.max(axis=1, keepdims=True)
        logp = o - np.log(np.exp(o).sum(axis=1, keepdims=True))
        loss -= logp[np.arange(Bn), y[:, t]].sum() / n
        dO[t] = (np.exp(logp) - np.eye(o.shape[1])[y[:, t]]) / n
    gn, pgn = np.zeros((Tn, L)), np.zeros((Tn, L))
    later = [np.zeros((Bn, hs[0].shape[2])) for _ in range(L)]  # through step t + 1
    for t in reversed(range(Tn)):
        above = None  # dL/dO^l_t from layer l + 1's step t
        for l in reversed(range(L)):
            dh = later[l] + (dO[t] @ top["W_hq"].T if l == L - 1 else above @ ps[l]["W_hq"].T)
            gn[t, l] = np.sqrt(np.sum(dh**2))
            later[l], above, share = nets[l].backward(inputs[l][t], hs[l][t], hs[l][t + 1], dh)
            pgn[t, l] = np.sqrt(share)
    return loss, gn, pgn


# ------------------------------------------------------------------------------ the probe


@functools.cache
def network(name: str, L: int, loss_at: str):
    """(params of one float64 network, x, y, the jitted probe's result) of an L-layer stack of
    `name` with W_h* ~ N(0, 1.5^2 / H) (gradients that neither vanish nor explode in T)."""
    cell = stack([registry.build(name, {}, activation="tanh", init="gaussian",
                                 init_value=1.5)] * L)
    k_p, k_x, k_y = jax.random.split(jax.random.key(7), 3)
    params = cell.init(k_p, V, H, V, jnp.float64)
    x = jax.random.randint(k_x, (B, T), 0, V)
    y = jax.random.randint(k_y, (B, T), 0, V)
    res = jax.jit(make_probe(cell, loss_at, "tokens"))(params, x, y)
    return params, np.asarray(x), np.asarray(y), res


LAYERS = {"vanilla": VanillaLayer, "gru": GRULayer}


# (vanilla, 2, last) is the job's, through the app (test_job_through_the_app)
@pytest.mark.parametrize("name, L, loss_at", [
    ("vanilla", 2, "all"), ("vanilla", 3, "last"), ("vanilla", 3, "all"), ("gru", 2, "last")])
def test_every_layer_matches_the_numpy_bptt(name, L, loss_at):
    """Each layer's total derivative and recurrent share at every t, to 1e-10."""
    params, x, y, res = network(name, L, loss_at)
    loss, gn, pgn = stack_bptt([LAYERS[name]] * L, [f64(p) for p in params], x, y, loss_at, V)
    assert res.log10_grad_norm.shape == res.log10_param_grad_norm.shape == (T, L)
    np.testing.assert_allclose(float(res.loss), loss, rtol=RTOL)
    np.testing.assert_allclose(10 ** np.asarray(res.log10_grad_norm), gn, rtol=RTOL)
    np.testing.assert_allclose(10 ** np.asarray(res.log10_param_grad_norm), pgn, rtol=RTOL)
    # the path into the layer above at the same step is there: at t = T with the loss at the
    # last step it is a lower layer's whole gradient (the state's own cotangent is 0 there)
    assert np.all(gn[-1] > 0) and not np.asarray(res.overflow).any()


def test_a_stacked_lstm_reports_every_layer_s_taps():
    """A 2-layer LSTM's per-layer dL/dH^l_t and dL/dC^l_t (its tap) equal the gradients with
    respect to zero perturbations of every layer's H_t and C_t inside a scan of the layers'
    own steps (autodiff of the whole sequence: none of the stack's backward step)."""
    L = 2
    lstm = registry.build("lstm", {}, init="gaussian", init_value=1.5)
    cell = stack([lstm] * L)
    k_p, k_x, k_y = jax.random.split(jax.random.key(3), 3)
    params = cell.init(k_p, V, H, V, jnp.float64)
    x = jax.random.randint(k_x, (B, T), 0, V)
    y = jax.random.randint(k_y, (B, T), 0, V)

    def loss(dh, dc):  # (T, L, B, H) perturbations of each layer's H_t and C_t
        def step(state, inputs):
            x_t, dh_t, dc_t = inputs
            new, u = [], x_t
            for l in range(L):
                h, c = lstm.tapped_step(params[l], state[l], u, {"cell": dc_t[l]})
                new.append((h + dh_t[l], c))
                u = lstm.readout(params[l], new[l])
            return tuple(new), None

        last, _ = jax.lax.scan(step, cell.initial_state(params, B), (x.T, dh, dc))
        o = lstm.readout(params[-1], last[-1])
        return -jnp.mean(jax.nn.log_softmax(o)[jnp.arange(B), y[:, -1]])

    zero = jnp.zeros((T, L, B, H))
    dh, dc = jax.jit(jax.grad(loss, (0, 1)))(zero, zero)
    res = jax.jit(make_probe(cell, "last", "tokens"))(params, x, y)
    assert set(res.taps) == {"cell"} and res.taps["cell"].shape == (T, L)
    np.testing.assert_allclose(10 ** np.asarray(res.log10_grad_norm),
                               np.linalg.norm(dh.reshape(T, L, -1), axis=-1), rtol=RTOL)
    np.testing.assert_allclose(10 ** np.asarray(res.taps["cell"]),
                               np.linalg.norm(dc.reshape(T, L, -1), axis=-1), rtol=RTOL)


def test_one_layer_is_the_cell_itself():
    """model.layers=1 builds the cell alone, so every one-layer result stays as it was."""
    cell = registry.build("vanilla", {})
    assert stack([cell]) is cell and cell.layers == 1
    assert stack([cell] * 2).layers == 2


def test_the_frame_has_a_row_per_seed_layer_and_t():
    """probe_frame of a stack's (S, T, L) profile: rows by seed, then layer (1 at the input),
    then t; the step's flags on every layer's row; a cell's (S, T) profile has layer 1 only."""
    from rnnjax.app.results import probe_frame
    from rnnjax.app.summary import Profile

    S, Tn, L = 2, 3, 2
    g = np.arange(S * Tn * L, dtype=float).reshape(S, Tn, L) + 1
    over = np.zeros((S, Tn), bool)
    over[1, 0] = True
    prof = Profile(loss=np.ones(S), grad_norm=g, param_grad_norm=2 * g, overflow=over,
                   forward_overflow_t=np.array([0, 2]), taps={"cell": 3 * g})
    df = probe_frame(np.array([5, 6]), prof, {})
    assert len(df) == S * Tn * L
    assert df.layer.tolist() == [1, 1, 1, 2, 2, 2] * S
    assert df.seed.tolist() == [5] * 6 + [6] * 6 and df.t.tolist() == [1, 2, 3] * 4
    for (s, l, t), row in df.set_index(["seed", "layer", "t"]).iterrows():
        assert row.grad_norm == g[s - 5, t - 1, l - 1]
        assert row.param_grad_norm == 2 * row.grad_norm == 2 * row.cell_grad_norm / 3
        assert row.overflow == (s == 6 and t == 1) and row.forward_overflow == (s == 6)
    one = probe_frame(np.array([5, 6]), prof._replace(
        grad_norm=g[..., 0], param_grad_norm=g[..., 0], taps={}), {})
    assert (one.layer == 1).all() and one.grad_norm.tolist() == g[..., 0].ravel().tolist()


def test_model_layers_below_one_is_one_line():
    from helpers import compose_cfg

    from rnnjax.app.validate import ConfigError

    with pytest.raises(ConfigError) as e:
        compose_cfg(["model.layers=0"])
    assert str(e.value) == "model.layers=0 is invalid: must be an integer >= 1"
    assert compose_cfg(["model.layers=3"]).model.layers == 3


def test_job_through_the_app(tmp_path, app):
    """`rnnjax run model.layers=2` in-process: params.npz holds each layer's fields, the
    `layer` column every layer's numpy-BPTT norms, summary.json the top layer's headline with
    every layer's slope, and no prediction."""
    S = 2
    job = tmp_path / "job"
    r = app(f"hydra.run.dir={job}", "model.layers=2", "dtype=float64", f"seeds={S}",
            f"hidden_size={H}", f"seq_len={T}", f"batch_size={B}", f"task.vocab_size={V}",
            "init=gaussian", "init.gain=1.5", "probe.loss_at=last")
    assert r.code == 0, r.err
    params = dict(np.load(job / "params.npz"))
    assert {k: v.shape for k, v in params.items()} == {
        "layer1.W_xh": (S, V, H), "layer1.W_hh": (S, H, H), "layer1.b_h": (S, H),
        "layer1.W_hq": (S, H, H), "layer1.b_q": (S, H),
        "layer2.W_xh": (S, H, H), "layer2.W_hh": (S, H, H), "layer2.b_h": (S, H),
        "layer2.W_hq": (S, H, V), "layer2.b_q": (S, V)}
    df = pd.read_parquet(job / "grad_norms.parquet")
    assert len(df) == S * 2 * T and (df.model_layers == 2).all()
    batch = np.load(job / "batch.npz")
    for s in range(S):
        ps = [{k.split(".")[1]: v[s] for k, v in params.items() if k.startswith(f"layer{l}.")}
              for l in (1, 2)]
        _, gn, pgn = stack_bptt([VanillaLayer] * 2, ps, batch["x"][s], batch["y"][s], "last", V)
        rows = df[df.seed == s].sort_values(["layer", "t"])
        np.testing.assert_allclose(rows.grad_norm.to_numpy().reshape(2, T), gn.T, rtol=RTOL)
        np.testing.assert_allclose(rows.param_grad_norm.to_numpy().reshape(2, T), pgn.T,
                                   rtol=RTOL)
    import json

    h = json.loads((job / "summary.json").read_text())["headline"]
    assert h["layer"] == 2 and set(h["layers"]) == {"1", "2"}
    assert h["log10_slope_per_step_back"] == h["layers"]["2"]["log10_slope_per_step_back"]
    assert h["theory"]["applies"] is False and "stack of 2 layers" in h["theory"]["not_applied"]
    assert "by layer 1: " in r.err + r.out


def test_the_report_draws_each_layer_of_a_stack_as_a_profile():
    """layer_jobs: a stack's rows (load_sweep) and its summary row (load_summaries) become one
    job per layer, with that layer's slope in the slope table; a one-layer job is untouched;
    quantiles over seeds and the fall are per layer; top_layer keeps the headline's layer."""
    from rnnjax.report import frames

    rows = []
    for job, L in (("one", 1), ("deep", 2)):
        for seed in (0, 1):
            for layer in range(1, L + 1):
                for t in (1, 2, 3):
                    rows.append({"job": job, "seed": seed, "layer": layer, "t": t, "T": 3,
                                 "train_step": 0, "model_layers": L,
                                 "grad_norm": 10.0 ** (t - 10 * layer - seed)})
    df = pd.DataFrame(rows)
    split = frames.layer_jobs(df)
    assert sorted(split.job.unique()) == ["deep[layer=1]", "deep[layer=2]", "one"]
    stats = frames.profile_stats(df)  # (job, layer, t): never two layers in one profile
    assert len(stats) == 3 * 3
    deep = stats[stats.job == "deep"].set_index(["layer", "t"])["median"]
    assert deep[(2, 3)] == pytest.approx(3 - 20 - 0.5)
    fall = frames.fall_per_seed(df)
    assert fall.set_index(["job", "layer", "seed"]).fall.tolist() == [2.0] * 6
    assert set(map(tuple, frames.top_layer(df)[["job", "layer"]].to_numpy())) == {
        ("one", 1), ("deep", 2)}
    summaries = pd.DataFrame({
        "job": ["one", "deep"], "model_layers": [1, 2], "status": "ok", "loss_at": "last",
        frames.SLOPE: [-0.5, -0.3], "headline.layers.1.log10_slope_per_step_back": [np.nan, -0.1],
        "headline.layers.2.log10_slope_per_step_back": [np.nan, -0.3]})
    table = frames.slope_table(summaries).set_index("job")
    assert table["measured slope (log10/step back)"].to_dict() == {
        "deep[layer=1]": -0.1, "deep[layer=2]": -0.3, "one": -0.5}
    assert table.loc["deep[layer=2]", "configuration"].endswith("layer 2")
