"""The data a job reads: on disk (downloaded once if needed) and long enough for its seq_len."""

from rnnjax.app.config import Config
from rnnjax.core.tasks import check_windows, load_timemachine


def prepare_data(cfg: Config, corpus_sizes: dict | None = None) -> None:
    """Makes sure the data a job needs is on disk (downloading it once if needed) and long
    enough for its seq_len. `corpus_sizes` caches the token counts of texts already read."""
    if cfg.task.name.value == "timemachine":
        sizes = {} if corpus_sizes is None else corpus_sizes
        if cfg.task.path not in sizes:
            sizes[cfg.task.path] = len(load_timemachine(cfg.task.path)[0])
        check_windows(sizes[cfg.task.path], cfg.seq_len)
