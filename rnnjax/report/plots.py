"""Figures of a run or sweep: pure functions from the frames of `rnnjax.app.results` (`load_sweep`,
`load_summaries`, `load_metrics`) to matplotlib Figures, drawn with seaborn from the tables of
`rnnjax.report.frames`. This module gathers them: profiles (`rnnjax.report.profiles`), the heatmap
(`rnnjax.report.heatmaps`), one point per job (`rnnjax.report.points`), training
(`rnnjax.report.training`), drawn in one style (`rnnjax.report.style`).

The figures are `matplotlib.figure.Figure` objects made without pyplot, so nothing global is
kept: save them with `fig.savefig(...)`, or let a notebook show them.

Conventions: steps back are counted from each job's own T (`T`: seq_len, or seq_len + 20 for
task=copy); lines are medians over seeds of log10 norms (see
`rnnjax.report.frames.profile_stats`), a median that is not finite is not plotted and the
figure says how many it left out; a theory
line is drawn only where it applies (`rnnjax.report.frames.predictions`); a y-range narrower than
`MIN_DECADES` is widened to it, so a flat profile reads flat instead of as zoomed noise;
points drawn at the same place (`COINCIDE`) are named in a note, never jittered; categorical
colours are Okabe and Ito's colour-blind-safe palette.
"""

from rnnjax.report.flossing import gradient_flossing
from rnnjax.report.frames import job_T
from rnnjax.report.heatmaps import heatmap
from rnnjax.report.modern import modern_cells
from rnnjax.report.points import curse_of_memory, phase_diagram, slope_vs_lyapunov
from rnnjax.report.profiles import before_after, cells_at_init, decay_curves
from rnnjax.report.spectra import lyapunov_spectra
from rnnjax.report.style import (
    COINCIDE,
    HEATMAP_LABEL,
    LOG10_NORM,
    MIN_DECADES,
    OKABE_ITO,
    STEPS_BACK,
    TIMESTEP,
    categorical,
    hue_title,
    min_span,
)
from rnnjax.report.training import (
    cells_training,
    slope_during_training,
    training_curves,
)

__all__ = ["COINCIDE", "HEATMAP_LABEL", "LOG10_NORM", "MIN_DECADES", "OKABE_ITO", "STEPS_BACK",
           "TIMESTEP", "before_after", "categorical", "cells_at_init", "cells_training",
           "curse_of_memory", "decay_curves", "gradient_flossing", "heatmap", "hue_title",
           "job_T", "min_span",
           "lyapunov_spectra", "modern_cells", "phase_diagram", "slope_during_training",
           "slope_vs_lyapunov",
           "training_curves"]
