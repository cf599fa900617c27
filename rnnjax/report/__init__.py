"""Reporting: tables, figures, report, reproduce. Reads files only: imports neither JAX nor Hydra,
and matplotlib and seaborn only where a figure is drawn (`load_plots`).
"""


def load_plots():
    """rnnjax.report.plots (seaborn, matplotlib and scipy: a second or more to import), imported
    when a figure is first drawn; matplotlib headless (set before seaborn imports pyplot)."""
    import matplotlib

    matplotlib.use("Agg")
    from rnnjax.report import plots

    return plots
