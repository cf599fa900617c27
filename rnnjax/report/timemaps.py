"""The time-to-time map in the report: each job's time_map.parquet (probe.time_map=true) drawn as a
triangular image, loss step s against timestep t <= s. Reads files only; matplotlib loads when
the figure is drawn."""

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rnnjax.app.results import TIME_MAP, _finished_jobs, value_job
from rnnjax.report import frames

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_PANELS = 12  # jobs drawn; the figure names how many it leaves out
CMAP = "viridis"  # perceptually uniform, dark where the gradient is small
FILE = "time_map.png"
HEADING = "Time-to-time map: which loss step reaches which timestep"
CAPTION = ("log10 ‖∂(L_s/T)/∂H_t‖ (decades; median over seeds) for every loss step s (y) and "
           "timestep t ≤ s (x), the loss averaged over all T steps, one panel per job that "
           "measured it (probe.time_map=true). A row is how far back one loss step's gradient "
           "reaches; the diagonal s = t is each step's own loss term; summed as vectors over s, "
           "a column is the gradient the profiles show; the row s = T is the last-step loss's "
           "profile less log10 T. Grey: no finite median; above the diagonal nothing (a loss "
           "step never reaches a later timestep).")


def load_time_maps(path: str | Path) -> pd.DataFrame | None:
    """Every finished job's time_map.parquet under `path` (those its summary.json lists), with
    a `job` column named as `load_sweep` names jobs; None where no job has one. A file that
    cannot be read skips its job with a warning."""
    root = Path(path)
    done, _ = _finished_jobs(root)
    out = []
    for job, summary in done.items():
        if TIME_MAP not in summary["files"]:
            continue
        try:
            df = pd.read_parquet(job / TIME_MAP)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds; one job never fails all
            warnings.warn(f"skipped the time map of {job.relative_to(root)} ({TIME_MAP}: "
                          f"{type(e).__name__}: {e})".splitlines()[0], stacklevel=2)
            continue
        name = str(job.relative_to(root))
        param = next((c[len("init_"):] for c in df.columns if c.startswith("init_")), None)
        df.insert(0, "job", name if param is None else
                  [value_job(name, param, v) for v in df[f"init_{param}"]])
        out.append(df)
    return pd.concat(out, ignore_index=True) if out else None


def medians(maps: pd.DataFrame, job: str) -> np.ndarray:
    """(T, T) the median over seeds of one job's map, [s - 1, t - 1]; NaN above the diagonal."""
    one = maps[maps["job"] == job]
    m = one.groupby(["s", "t"])["log10_grad_norm"].median()
    T = int(one["s"].max())
    image = np.full((T, T), np.nan)
    image[m.index.get_level_values("s") - 1, m.index.get_level_values("t") - 1] = m.to_numpy()
    return image


def time_map_figure(maps: pd.DataFrame, summaries: pd.DataFrame) -> "Figure":
    """One panel per job (at most MAX_PANELS, in the report's job order), one colour scale
    over all: the median map, s on the y axis from 1 (top) to T, t on the x axis."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    table = frames.jobs_table(summaries)
    table = table[table["job"].isin(set(maps["job"]))]
    shown = table.head(MAX_PANELS)
    images = [medians(maps, j) for j in shown["job"]]
    finite = np.concatenate([i[np.isfinite(i)] for i in images])
    norm = Normalize(*(np.percentile(finite, [0, 100]) if finite.size else (0, 1)))
    cols = min(3, len(images))
    rows = math.ceil(len(images) / cols)
    fig = Figure(figsize=(4.2 * cols + 1.2, 3.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, image, job, label in zip(axes, images, shown["job"], shown["label"], strict=False):
        T = image.shape[0]
        below = np.tril(np.ones((T, T), bool))  # s >= t
        shade = np.where(below & ~np.isfinite(image), 0.0, np.nan)  # no finite median: grey
        extent = (0.5, T + 0.5, T + 0.5, 0.5)
        im = ax.imshow(np.ma.masked_invalid(image), cmap=CMAP, norm=norm, extent=extent,
                       interpolation="nearest", aspect="equal")
        ax.imshow(np.ma.masked_invalid(shade), cmap="Greys", vmin=-1, vmax=1, extent=extent,
                  interpolation="nearest", aspect="equal")
        ax.set_title(label or job, fontsize=10, wrap=True)
        ax.set_xlabel("timestep t")
        ax.set_ylabel("loss step s")
    for ax in axes[len(images):]:
        ax.set_axis_off()
    fig.colorbar(im, ax=axes.tolist(), label="log10 ‖∂(L_s/T)/∂H_t‖ (decades)", shrink=0.9)
    left = len(table) - len(shown)
    if left:
        fig.text(0.005, 0.005, f"{left} more job(s) with a time map are not drawn (the first "
                 f"{MAX_PANELS} in the report's order are).", fontsize=9, color="dimgray")
    return fig


def figures(maps: pd.DataFrame | None, summaries: pd.DataFrame) -> list:
    """(file, heading, caption, make) of the time-map figure, [] where no job has a map."""
    if maps is None or maps.empty:
        return []
    return [(FILE, HEADING, CAPTION, lambda: time_map_figure(maps, summaries))]
