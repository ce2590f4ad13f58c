"""The TRL versions trl-sdpo is tested with, and the one warning given when another is installed.

`SDPOTrainer` overrides private `DPOTrainer` methods (`_prepare_dataset`, `_compute_loss`, `_precompute_ref_logps`)
and `data.py` calls `trl.data_utils._tokenize`. TRL may change any of them in a minor release, so a version CI has
not run may fail deep inside training, or train differently without failing. pyproject.toml's `trl` requirement is
this range, so pip refuses another TRL; the warning is for environments pip did not resolve (`--no-deps`, a TRL
installed afterwards from source).
"""

from __future__ import annotations

import warnings
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

# The TRL releases CI tests: the floor leg installs the lower bound, the main leg the newest release pip resolves
# under the upper one. tests/test_trl_versions.py checks that pyproject.toml's `trl` requirement is exactly this.
TESTED_TRL = ">=1.16.0,<1.17"

_warned = False


def untested_trl_message(installed: str) -> str | None:
    """
    The warning for TRL `installed`, or `None` when `installed` is within [`TESTED_TRL`].

    A pre-release or development build of a tested release counts as tested (`1.16.1.dev0`); one of the next minor
    release does not (`1.17.0.dev0` is outside `<1.17`).
    """
    try:
        version = Version(installed)
    except InvalidVersion:
        return f"trl-sdpo cannot read the installed TRL version {installed!r}; it is tested with trl{TESTED_TRL}."
    if SpecifierSet(TESTED_TRL).contains(version, prereleases=True):
        return None
    return (
        f"trl-sdpo is tested with trl{TESTED_TRL} and TRL {installed} is installed. SDPOTrainer overrides private "
        "DPOTrainer methods that may have changed; install a tested TRL (pip install 'trl"
        f"{TESTED_TRL}') or check the training results before relying on them."
    )


def warn_if_untested_trl(installed: str | None = None) -> None:
    """Warn once per process when the installed TRL (or `installed`) is outside [`TESTED_TRL`]."""
    global _warned
    if _warned:
        return
    message = untested_trl_message(installed if installed is not None else metadata.version("trl"))
    if message is not None:
        _warned = True
        warnings.warn(message, UserWarning, stacklevel=2)
