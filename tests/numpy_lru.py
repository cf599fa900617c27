"""An independent float64 numpy forward pass and BPTT of the LRU (Orvieto et al. 2023), written
out step by step in complex numpy from the paper's equations. It shares no code with rnnjax.

    lambda = exp(-exp(nu_log) + i exp(theta_log)),   h_t = lambda h_{t-1} + gamma (x_t B),
    y_t = Re(h_t C) + x_t D,   o_t = y_t W_hq + b_q,   h_0 = 0,

with x_t a one-hot row for tokens, C (H, H) complex, D (D, H) real and W_hq (H, Q).

Gradients of the real loss L with respect to a complex h are written G = dL/dRe h + i dL/dIm h,
so that dL = Re(conj(G) dh). Then h_{t+1} = lambda h_t gives G_t += conj(lambda) G_{t+1}, and
Re(h C) W_hq gives the local G_t = dY_t conj(C)^T with dY_t = dO_t W_hq^T.
"""

import numpy as np


def lru_bptt(p, x, y, loss_at, normalize=True, kind="tokens", lam=None):
    """Returns a dict of float64/complex128 numpy arrays:

    loss (), G (T, B, H) dL/dh_t (total derivative), d_nu (T, H) and d_theta (T, H) step t's
    share of dL/dnu_log and dL/dtheta_log, G_lambda (H,) dL/dlambda (gamma held fixed), hs
    (T + 1, B, H) with hs[0] = h_0 = 0, dhT_dlambda (B, H) the sensitivity of h_T to lambda
    from its closed form sum_{j<T} (T - j) lambda^(T-j-1) gamma (x_j B).

    Args:
      p: dict of the LRU's parameters (nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D,
        W_hq, b_q), any float dtype.
      x: (B, T) integer tokens, or (B, T, D) real inputs.
      y: (B, T) integer targets (kind "tokens") or (B,) real targets ("regression": squared
        error of o_T[:, 0] at the last step).
      lam: (H,) complex eigenvalues to use instead of those of nu_log and theta_log (for finite
        differences in lambda itself), or None.
    """
    q = {k: np.asarray(v, np.float64) for k, v in p.items()}
    nu, theta = np.exp(q["nu_log"]), np.exp(q["theta_log"])
    lam = np.exp(-nu + 1j * theta) if lam is None else np.asarray(lam, complex)
    gamma = np.exp(q["gamma_log"]) if normalize else np.ones_like(nu)
    Bc = q["B_re"] + 1j * q["B_im"]  # (D, H)
    Cc = q["C_re"] + 1j * q["C_im"]  # (H, H)
    Dm, W, b = q["D"], q["W_hq"], q["b_q"]  # (D, H), (H, Q), (Q,)
    x = np.asarray(x)
    Bsz, T = x.shape[:2]
    D, H = Bc.shape
    Q = W.shape[1]

    def dense(t):
        return np.eye(D)[x[:, t]] if np.issubdtype(x.dtype, np.integer) else x[:, t].astype(float)

    hs = np.zeros((T + 1, Bsz, H), complex)
    outs = np.zeros((T, Bsz, Q))
    dhT_dlambda = np.zeros((Bsz, H), complex)
    for t in range(T):
        u = dense(t)
        drive = gamma * (u @ Bc)
        hs[t + 1] = lam * hs[t] + drive
        if t < T - 1:  # h_T = sum_j lambda^(T-j) drive_j, j = t + 1
            dhT_dlambda += (T - 1 - t) * lam ** (T - 2 - t) * drive
        ys = (hs[t + 1] @ Cc).real + u @ Dm
        outs[t] = ys @ W + b

    dO = np.zeros((T, Bsz, Q))
    if kind == "tokens":
        steps = range(T) if loss_at == "all" else [T - 1]
        n = Bsz * len(steps)
        loss = 0.0
        for t in steps:
            o = outs[t] - outs[t].max(axis=1, keepdims=True)
            logp = o - np.log(np.exp(o).sum(axis=1, keepdims=True))
            loss -= logp[np.arange(Bsz), y[:, t]].sum() / n
            dO[t] = (np.exp(logp) - np.eye(Q)[y[:, t]]) / n
    else:
        err = outs[-1, :, 0] - np.asarray(y, np.float64)
        loss = np.mean(err**2)
        dO[-1, :, 0] = 2 * err / Bsz

    G = np.zeros((T, Bsz, H), complex)
    nxt = np.zeros((Bsz, H), complex)
    for t in reversed(range(T)):
        dY = dO[t] @ W.T
        G[t] = dY @ Cc.conj().T + nxt
        nxt = np.conj(lam) * G[t]

    # Step t's share: h_t depends on nu_log and theta_log directly through lambda h_{t-1};
    # d lambda / d nu_log = -nu lambda, d lambda / d theta_log = i theta lambda.
    d_nu = np.zeros((T, H))
    d_theta = np.zeros((T, H))
    G_lambda = np.zeros(H, complex)
    for t in range(T):
        h_prev = hs[t]
        d_nu[t] = np.sum(np.real(np.conj(G[t]) * (-nu * lam) * h_prev), axis=0)
        d_theta[t] = np.sum(np.real(np.conj(G[t]) * (1j * theta * lam) * h_prev), axis=0)
        # dL/dRe lambda = Re(conj(G) h_prev), dL/dIm lambda = Re(conj(G) i h_prev)
        G_lambda += np.sum(np.real(np.conj(G[t]) * h_prev)
                           + 1j * np.real(np.conj(G[t]) * 1j * h_prev), axis=0)
    return {"loss": loss, "G": G, "d_nu": d_nu, "d_theta": d_theta, "G_lambda": G_lambda,
            "hs": hs, "lam": lam, "dhT_dlambda": dhT_dlambda}
