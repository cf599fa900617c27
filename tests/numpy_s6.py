"""An independent float64 numpy BPTT of the S6 layer (Gu & Dao 2023, Mamba's selective SSM),
written from the equations (a Python loop over time; it shares no code with rnnjax):

    u_t = x_t W_in + b_in,  Delta_t = softplus(u_t W_delta + b_delta),  B_t = u_t W_B,
    C_t = u_t W_C,  A = -exp(A_log),
    h_t[d, n] = exp(Delta_t[d] A[d, n]) h_{t-1}[d, n] + Delta_t[d] B_t[n] u_t[d],  h_0 = 0,
    y_t[d] = sum_n C_t[n] h_t[d, n] + D[d] u_t[d],  o_t = y_t W_hq + b_q.
"""

import math

import numpy as np
from numpy_minrnn import inputs_of, loss_and_dO, np_sigmoid


def np_softplus(a):
    return np.logaddexp(0.0, a)


def forward(p, x):
    """The equations, a Python loop over time: a dict of h (T + 1, B, E, N) with h[0] = 0,
    keep = exp(Delta A) (T, B, E, N), y (T, B, E), and u, pre (Delta's pre-activation), delta,
    Bm, Cm (T, B, .), A (E, N), X (T, B, D)."""
    X = inputs_of(x, p["W_in"].shape[0])
    u = X @ p["W_in"] + p["b_in"]  # (T, B, E)
    pre = u @ p["W_delta"] + p["b_delta"]
    delta = np_softplus(pre)
    Bm, Cm = u @ p["W_B"], u @ p["W_C"]  # (T, B, N)
    A = -np.exp(p["A_log"])  # (E, N)
    T_, B_ = X.shape[:2]
    keep = np.exp(delta[..., None] * A)  # (T, B, E, N)
    h = np.zeros((T_ + 1, B_, *A.shape))
    y = np.zeros(u.shape)
    for t in range(T_):
        h[t + 1] = keep[t] * h[t] + delta[t][..., None] * Bm[t][:, None, :] * u[t][..., None]
        y[t] = np.einsum("ben,bn->be", h[t + 1], Cm[t]) + p["D"] * u[t]
    return dict(h=h, keep=keep, y=y, u=u, pre=pre, delta=delta, Bm=Bm, Cm=Cm, A=A, X=X)


def s6_bptt(p, x, y, loss_at, kind="tokens"):
    """loss, gn (T,) = ||dL/dh_t|| over (B, E, N), pgn (T,) = the norm of step t's share of
    (dL/dW_delta, dL/db_delta, dL/dA_log), grads = their sums over steps, and the forward's
    dict."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    f = forward(p, x)
    loss, dO = loss_and_dO(f["y"], p["W_hq"], p["b_q"], y, loss_at, kind)
    T_ = len(f["X"])
    gn, pgn = np.zeros(T_), np.zeros(T_)
    grads = {"W_delta": 0.0, "b_delta": 0.0, "A_log": 0.0}
    nxt = np.zeros_like(f["h"][0])
    for t in reversed(range(T_)):
        dy = dO[t] @ p["W_hq"].T  # (B, E)
        dh = dy[..., None] * f["Cm"][t][:, None, :] + nxt  # (B, E, N): read-out + later steps
        gn[t] = np.linalg.norm(dh)
        u, delta, keep, h_prev = f["u"][t], f["delta"][t], f["keep"][t], f["h"][t]
        # h_t = exp(Delta A) h_{t-1} + Delta B u: d/dDelta = A exp(Delta A) h_{t-1} + B u
        d_delta = np.sum(dh * (f["A"] * keep * h_prev + f["Bm"][t][:, None, :] * u[..., None]),
                         axis=2)  # (B, E)
        d_pre = d_delta * np_sigmoid(f["pre"][t])  # softplus' = sigmoid
        dA = np.sum(dh * keep * delta[..., None] * h_prev, axis=0)  # (E, N)
        share = {"W_delta": u.T @ d_pre, "b_delta": d_pre.sum(0),
                 "A_log": dA * f["A"]}  # dA/dA_log = -exp(A_log) = A
        pgn[t] = math.sqrt(sum(np.sum(v**2) for v in share.values()))
        grads = {k: grads[k] + share[k] for k in grads}
        nxt = dh * keep
    return {"loss": loss, "gn": gn, "pgn": pgn, "grads": grads, "forward": f}
