"""Independent float64 numpy BPTT for d2l's GRU (d2l 10.2), written out step by step from
d2l's equations (the reset gate before the recurrent product).

It shares no code with rnnjax: forward with a Python loop over time, softmax cross-entropy by
hand, and every derivative of the backward recursion written out.
"""

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def as_f64(p, names):
    return [np.asarray(p[k], np.float64) for k in names]


def loss_and_dO(hs, W_hq, b_q, y, loss_at):
    """Mean softmax cross-entropy over the steps that carry loss, and dL/dO_t (T, B, Q).

    hs: (T, B, H) H_1..H_T."""
    T, B = y.shape[1], y.shape[0]
    Q = W_hq.shape[1]
    steps = range(T) if loss_at == "all" else [T - 1]
    n = B * len(steps)
    loss = 0.0
    dO = np.zeros((T, B, Q))
    for t in steps:
        o = hs[t] @ W_hq + b_q
        o = o - o.max(axis=1, keepdims=True)
        logp = o - np.log(np.exp(o).sum(axis=1, keepdims=True))
        loss -= logp[np.arange(B), y[:, t]].sum() / n
        dO[t] = (np.exp(logp) - np.eye(Q)[y[:, t]]) / n
    return loss, dO


def gru_bptt(p, x, y, loss_at):
    """d2l's GRU: returns loss, grad_norm (T,) = ||dL/dH_t||, param_grad_norm (T,) = the norm
    of step t's share of (dL/dW_hz, dL/dW_hr, dL/dW_hh), and those full gradients.

    Args:
      p: dict of W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q.
      x, y: (B, T) integer tokens and targets.
    """
    (W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q) = as_f64(
        p, ["W_xz", "W_hz", "b_z", "W_xr", "W_hr", "b_r", "W_xh", "W_hh", "b_h", "W_hq", "b_q"])
    B, T = x.shape
    H = W_hh.shape[0]
    h = np.zeros((T + 1, B, H))  # h[0] = H_0 = 0
    Z, R, Ht = (np.zeros((T, B, H)) for _ in range(3))
    for t in range(T):
        X = np.eye(W_xz.shape[0])[x[:, t]]  # one-hot
        Z[t] = sigmoid(X @ W_xz + h[t] @ W_hz + b_z)
        R[t] = sigmoid(X @ W_xr + h[t] @ W_hr + b_r)
        Ht[t] = np.tanh(X @ W_xh + (R[t] * h[t]) @ W_hh + b_h)
        h[t + 1] = Z[t] * h[t] + (1 - Z[t]) * Ht[t]
    loss, dO = loss_and_dO(h[1:], W_hq, b_q, y, loss_at)
    gn, pgn = np.zeros(T), np.zeros(T)
    dW = {"W_hz": 0.0, "W_hr": 0.0, "W_hh": 0.0}
    nxt = np.zeros((B, H))  # dL/dH_t through step t + 1
    for t in reversed(range(T)):
        dH = dO[t] @ W_hq.T + nxt
        gn[t] = np.linalg.norm(dH)
        hp = h[t]
        da_z = dH * (hp - Ht[t]) * Z[t] * (1 - Z[t])
        da_h = dH * (1 - Z[t]) * (1 - Ht[t] ** 2)
        d_rh = da_h @ W_hh.T  # dL/d(R_t * H_{t-1})
        da_r = d_rh * hp * R[t] * (1 - R[t])
        share = {"W_hz": hp.T @ da_z, "W_hr": hp.T @ da_r, "W_hh": (R[t] * hp).T @ da_h}
        pgn[t] = np.sqrt(sum((g**2).sum() for g in share.values()))
        for k in dW:
            dW[k] = dW[k] + share[k]
        nxt = dH * Z[t] + da_z @ W_hz.T + d_rh * R[t] + da_r @ W_hr.T
    return loss, gn, pgn, dW
