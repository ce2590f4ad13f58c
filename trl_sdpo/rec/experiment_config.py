"""
Deprecated import path (0.3.0): `trl_sdpo.rec.experiment_config` moved to `trl_sdpo.rec.study.config`; this module forwards every name there and
is removed in 0.4.0.
"""

import warnings

from .study import config as _config

warnings.warn(
    "`trl_sdpo.rec.experiment_config` is deprecated and will be removed in 0.4.0; import from trl_sdpo.rec.study.config instead.",
    DeprecationWarning,
    stacklevel=2,
)

_MODULES = (_config,)


def __getattr__(name: str):
    for module in _MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
