"""MkDocs hooks (mkdocs.yml: hooks): the reference tables made from the code, and the committed
figures and report put into the site.

A page asks for a table with a marker on a line of its own: `<!-- rnnjax:config -->` (every
config key, group option and cell option: `rnnjax.app.reference`; `<!-- rnnjax:config train. -->`
the keys under `train.` alone), `<!-- rnnjax:columns -->`
(the columns of a job's tables), `<!-- rnnjax:experiments -->` (conf/experiment) and
`<!-- rnnjax:figures -->` (conf/figures.yaml, as `rnnjax reproduce` draws them). An unknown
marker fails the build.
"""

import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- rnnjax:([a-z_]+)(?: (\S+))? -->$", re.M)


def _figures() -> str:
    from rnnjax.app.markdown import markdown_table
    from rnnjax.report import figures

    rows = []
    for name, spec in figures.published()["figures"].items():
        axes = spec.get("grid") or {}
        first = spec["caption"].split(". ")[0].rstrip(".") + "."
        rows.append([f"[`{name}`](results/figures/{name}.png)",
                     len(figures.grid(**axes)) if axes else "—", first.replace("|", "/")])
    return markdown_table(["figure", "jobs", "what it shows"], rows, right=[False, True, False]) \
        + "\n"


def _table(name: str, arg: str | None) -> str:
    from rnnjax.app import reference

    tables = {"config": reference.config_markdown, "columns": reference.columns_markdown,
              "experiments": reference.experiments_markdown, "figures": _figures}
    if name not in tables:
        raise PluginError(f"unknown marker <!-- rnnjax:{name} -->; known: {', '.join(tables)}")
    return tables[name](arg) if arg else tables[name]()


def on_page_markdown(markdown, page, config, files):
    return MARKER.sub(lambda m: _table(m.group(1), m.group(2)), markdown)


def on_files(files, config):
    """results/REPORT.md and results/figures/*.png, as the repository commits them."""
    paths = [ROOT / "results" / "REPORT.md", *sorted((ROOT / "results" / "figures").glob("*.png"))]
    for path in paths:
        files.append(File(str(path.relative_to(ROOT)), src_dir=str(ROOT),
                          dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
