"""The documentation: every config key, option and column has a description (the references
the site prints are made from them, `rnnjax.app.reference`); the site builds strictly, its
tutorials executed (`rnnjax docs --build`); and its pages render with their figures in headless
Chromium (Debian's chromium and chromium-driver; skipped, with a message, without them)."""

import dataclasses
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from rnnjax.app import reference
from rnnjax.app.config import Config
from rnnjax.app.results import config_schema_columns

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted(p.stem for p in (ROOT / "docs" / "tutorials").glob("*.py"))


def _leaves(node, prefix=""):
    for key, value in node.items():
        if OmegaConf.is_dict(value):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_config_key_group_option_and_cell_option_is_described():
    keys = {k.key: k for k in reference.config_keys()}
    # every key of the schema is a row (a group's `name` is the group's own row)
    schema = {k.removesuffix(".name") for k in _leaves(OmegaConf.structured(Config))}
    assert schema <= set(keys), sorted(schema - set(keys))
    assert not [k for k in keys.values() if not k.meaning.strip()]
    assert keys["train.floss.k"].type == "int or null" and keys["probe.scan"].allowed == \
        "sequential, parallel"
    assert keys["seq_len"].default == 64 and keys["task"].default.value == "random"
    # every option of every group, every cell option and every experiment says what it is
    for group in (*reference.GROUPS, *reference.HYDRA_GROUPS):
        options = reference.group_options(group)
        assert options and not [o for o in options if not o.meaning.strip()], group
    assert {o.name for o in reference.group_options("cell")} >= {"vanilla", "lstm", "s6"}
    assert not [o for o in reference.cell_options() if not o.meaning.strip()]
    assert not [o for o in reference.experiments() if not o.meaning.strip()]
    assert not [c for cols in reference.COLUMNS.values() for c, (_, m) in cols.items()
                if not m.strip()]


def test_a_key_without_a_description_fails(monkeypatch):
    """The check above can fail: a schema key whose help is empty is found."""
    @dataclasses.dataclass
    class Bare:
        undocumented: int = 1

    fields = {f.name: f for f in dataclasses.fields(Config)}
    monkeypatch.setattr(reference.schema, "Config", dataclasses.make_dataclass(
        "Config", [(f.name, f.type, f) for f in fields.values()] +
        [("extra", Bare, dataclasses.field(default_factory=Bare))]))
    rows = {k.key: k for k in reference.config_keys()}
    assert rows["extra.undocumented"].meaning == ""


def test_every_column_a_job_writes_is_described_and_every_description_is_a_column(app,
                                                                                  tmp_path):
    """A small training LSTM job on selective copying (the loss over all steps, an accuracy)
    with the time-to-time map writes every table; a column without a description, or a
    description of no column, fails."""
    lstm_job = tmp_path / "job"
    r = app("cell=lstm", "task=selective_copy", "task.tokens=1", "task.symbols=2", "seq_len=4",
            "hidden_size=3", "batch_size=2", "seeds=1", "train.steps=2",
            "train.log_every=1", "probe.time_map=true", f"hydra.run.dir={lstm_job}")
    assert r.code == 0, r.err
    config = {c.name for c in config_schema_columns()}
    for file, described in reference.COLUMNS.items():
        written = set(pd.read_parquet(lstm_job / file).columns) - config
        assert written == set(described), (file, written ^ set(described))
    assert set(reference.COLUMNS) == {p.name for p in lstm_job.glob("*.parquet")}


def test_the_markdown_references_hold_every_row():
    text = reference.config_markdown()
    assert all(f"| `{k.key}` |" in text for k in reference.config_keys())
    assert "### `hydra/launcher=...`" in text and "| `slurm` |" in text
    assert reference.config_markdown("train.floss.").count("\n| `train.floss.") == 6
    columns = reference.columns_markdown()
    assert "| `grad_norm` | float |" in columns and "| `train_lr` | `train.lr` |" in columns
    assert "| `+experiment=urnn_gradients` |" in reference.experiments_markdown()


# ----------------------------------------------------------------------- the site, built

@functools.cache
def _built(out: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnjax", "docs", "--build", "--out", out],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    r = _built(str(out))
    assert r.returncode == 0, r.stderr[-4000:]
    return out


@pytest.mark.e2e
def test_the_site_builds_strictly_with_its_tutorials_run(site):
    config = (site / "config" / "index.html").read_text()
    assert "train.floss.burn_in" in config and "cell.dt_min" in config
    assert "grad_norms.parquet" in (site / "outputs" / "index.html").read_text()
    assert "fig13_gradient_flossing" in (site / "figures" / "index.html").read_text()
    assert "rnnjax.app.api.probe" in (site / "api" / "index.html").read_text()
    assert (site / "results" / "figures" / "fig1_vanishing_vs_length.png").is_file()
    for name in TUTORIALS:  # executed: each page holds its outputs, a figure among them
        page = (site / "tutorials" / name / "index.html").read_text()
        assert "data:image/png;base64" in page, name
    assert len(TUTORIALS) == 4


@pytest.mark.e2e
def test_a_broken_link_fails_the_build(tmp_path):
    """Strict: a page linking to a page that does not exist is an error, not a warning."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\n[gone](nowhere.md)\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: x\nstrict: true\n")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build"], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ,
                                                            "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode != 0 and "nowhere.md" in r.stderr


def test_docs_without_a_checkout_is_one_line(monkeypatch, tmp_path, capsys):
    from rnnjax.report import docs

    monkeypatch.setattr(docs, "CONFIG", tmp_path / "mkdocs.yml")
    assert docs.main(["--build"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mkdocs.yml not found" in err


# ------------------------------------------------------------- the site, in a browser

def _installing() -> bool:
    """Whether .ci/run is still installing chromium in the background (the process it names in
    RNNJAX_CHROMIUM_INSTALLING runs, and is not a zombie its shell has yet to reap)."""
    pid = os.environ.get("RNNJAX_CHROMIUM_INSTALLING", "")
    try:
        return pid.isdigit() and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def _chrome():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser check needs selenium")
    waited = time.monotonic()
    while _installing() and time.monotonic() - waited < 300:
        time.sleep(1)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("no headless Chromium (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them where it can)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=driver)
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


IMAGES = """return Array.from(document.images).map(i => [i.currentSrc.slice(0, 80), i.complete,
                                                      i.naturalWidth])"""


@pytest.mark.e2e
def test_the_front_page_and_the_tutorials_render_with_their_figures(served):
    """Each page loads in Chromium with its figures decoded (every <img> complete and of a
    width > 0); a screenshot of each is kept in results/runs/docs/ (git-ignored)."""
    shots = ROOT / "results" / "runs" / "docs"
    shots.mkdir(parents=True, exist_ok=True)
    browser = _chrome()
    try:
        for page in ["", *(f"tutorials/{name}/" for name in TUTORIALS)]:
            browser.get(f"{served}/{page}")
            assert "rnnjax" in browser.title, page
            images = browser.execute_script(IMAGES)
            assert images, f"{page or 'index'}: no figure"
            broken = [src for src, complete, width in images if not (complete and width > 0)]
            assert not broken, (page, broken)
            name = page.strip("/").replace("/", "_") or "index"
            browser.save_screenshot(str(shots / f"{name}.png"))
            assert (shots / f"{name}.png").stat().st_size > 10_000
    finally:
        browser.quit()
    print(f"screenshots: {shots}")
