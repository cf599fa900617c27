"""The data a job reads: on disk (downloaded once if needed) and long enough for its seq_len."""

from rnnjax.app.config import Config
from rnnjax.core.mnist import MNIST_TASKS, load_mnist
from rnnjax.core.tasks import check_windows, load_timemachine


def prepare_data(cfg: Config, corpus_sizes: dict | None = None) -> None:
    """Makes sure the data a job needs is on disk (downloading it once if needed) and long
    enough for its seq_len, or that the MNIST files are there and parse. `corpus_sizes` caches
    what was read already (token counts of texts; MNIST folders checked), across a sweep's
    jobs."""
    sizes = {} if corpus_sizes is None else corpus_sizes
    if cfg.task.name.value == "timemachine":
        if cfg.task.path not in sizes:
            sizes[cfg.task.path] = len(load_timemachine(cfg.task.path)[0])
        check_windows(sizes[cfg.task.path], cfg.seq_len)
    elif cfg.task.name.value in MNIST_TASKS and ("mnist", cfg.task.path) not in sizes:
        sizes["mnist", cfg.task.path] = len(load_mnist(cfg.task.path, cfg.task.name.value)[0])
