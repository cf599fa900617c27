"""What the synthetic tasks score without memory: the numbers that the job's log, the tasks and
the report's tables and figures share. Plain Python (no JAX, numpy or pandas), so that the
report imports it without starting JAX.
"""

import math

ADDING_BASELINE = 1 / 6  # the adding problem's MSE of always predicting 1: E[(u1 + u2 - 1)^2]
COPY_SYMBOLS = 8  # the copy task's data symbols (1..8), each equally likely
COPY_LENGTH = 10  # symbols to remember


def memoryless_baseline(task: str, T: int, loss_at: str = "all", tokens: int | None = None,
                        symbols: int | None = None) -> float | None:
    """The loss of the best predictor that remembers nothing, or None where the task has none
    (or, for selective_copy, where `tokens` and `symbols` are not given).

    adding: MSE 1/6, always predicting 1 (E[(u1 + u2 - 1)^2] = 2/12). copy (T = seq_len + 20
    steps): blanks where blanks are due and a uniform guess among the 8 symbols at each of the
    last 10 steps, cross-entropy 10 log 8 / T averaged over all steps (log 8 at the last step).
    selective_copy (T = seq_len + tokens): the same with `tokens` guesses among `symbols`,
    tokens log(symbols) / T (log(symbols) at the last step).
    """
    if task == "adding":
        return ADDING_BASELINE
    if task == "copy":
        guess = math.log(COPY_SYMBOLS)
        return guess if loss_at == "last" else COPY_LENGTH * guess / T
    if task == "selective_copy" and tokens is not None and symbols is not None:
        guess = math.log(symbols)
        return guess if loss_at == "last" else tokens * guess / T
    return None
