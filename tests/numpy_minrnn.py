"""Pieces of the independent float64 numpy BPTT of the minGRU and the minLSTM (Feng et al.
2024) that both share: the sigmoid, the log-space form's g, the inputs as (T, B, D)
rows, and the loss with its dL/do_t. Written from the equations; it shares no code with
rnnjax."""

import numpy as np


def np_sigmoid(a):
    return np.exp(-np.logaddexp(0.0, -a))


def np_g(a):
    return np.where(a >= 0, a + 0.5, np_sigmoid(a))


def inputs_of(x, D_):
    """(T, B, D) float64: one-hot rows for (B, T) tokens, else the (B, T, D) inputs."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer):
        return np.eye(D_)[x].transpose(1, 0, 2)
    return np.asarray(x, np.float64).transpose(1, 0, 2)


def loss_and_dO(hs, W_hq, b_q, y, loss_at, kind):
    """The loss and dL/do_t (T, B, Q): mean softmax cross-entropy over the steps that carry
    loss (tokens), or the mean squared error of the last output's first column (regression)."""
    T_, B_ = hs.shape[:2]
    o = hs @ W_hq + b_q  # (T, B, Q)
    dO = np.zeros_like(o)
    if kind == "regression":
        err = o[-1, :, 0] - y
        dO[-1, :, 0] = 2 * err / B_
        return np.mean(err**2), dO
    steps = range(T_) if loss_at == "all" else [T_ - 1]
    n = B_ * len(steps)
    loss = 0.0
    for t in steps:
        a = o[t] - o[t].max(axis=1, keepdims=True)
        logp = a - np.log(np.exp(a).sum(axis=1, keepdims=True))
        loss -= logp[np.arange(B_), y[:, t]].sum() / n
        dO[t] = (np.exp(logp) - np.eye(o.shape[2])[y[:, t]]) / n
    return loss, dO
