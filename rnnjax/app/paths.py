"""Where the app's Hydra configs are: conf/ at the repository root in a checkout (and an
editable install), shipped as rnnjax/conf/ inside an installed package."""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # rnnjax/
CONF_DIR = next((d for d in (_PACKAGE_DIR / "conf", _PACKAGE_DIR.parent / "conf")
                 if (d / "config.yaml").is_file()), _PACKAGE_DIR.parent / "conf")
CONFIG_NAME = "config"  # conf/config.yaml
