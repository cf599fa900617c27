"""One line for whatever went wrong before a job ran: a bad config, an unreadable data file,
a Hydra error, a file that cannot be written; and the exit that follows it."""

import sys
from dataclasses import is_dataclass
from typing import Any

from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from rnnjax.app.validate import ConfigError, _omegaconf_message, not_a_key
from rnnjax.core.tasks import DataError


def fail(message: str) -> None:
    # One line and a non-zero exit, before Hydra writes anything. SystemExit passes through
    # Hydra's error reporting, which would otherwise add a traceback and a hint.
    print(f"rnnjax: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def error_line(e: BaseException) -> str:
    """One message for whatever composing or validating a job raised."""
    if isinstance(e, ConfigError | DataError):
        return str(e)
    if isinstance(e, OmegaConfBaseException):  # e.g. an interpolation that does not resolve
        return _omegaconf_message(e)
    if isinstance(e, HydraException):  # composing failed: an unknown key, a wrong type
        cause = e.__cause__
        if isinstance(cause, ConfigAttributeError | ConfigKeyError) \
                and is_dataclass(getattr(cause, "object_type", None)):
            return not_a_key(cause.full_key, cause.object_type)
        if isinstance(cause, OmegaConfBaseException):
            return _omegaconf_message(cause)
        if isinstance(e, OverrideParseException):
            return f"cannot parse {e.override}: {e.message.splitlines()[0]}"
        # Hydra's own message, on one line, without its search path and links.
        lines = [ln.strip() for ln in str(e).split("Config search path:")[0].splitlines()]
        return "; ".join(ln for ln in lines if ln and not ln.startswith("See http"))
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def os_error_line(e: OSError, path: Any = None) -> str:
    """One line naming the path an OSError is about and what is wrong with it."""
    where = e.filename if e.filename is not None else path
    return f"cannot write {where}: {e.strerror or e}"
