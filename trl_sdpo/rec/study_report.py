"""
Deprecated import path (0.3.0): `trl_sdpo.rec.study_report` moved to `trl_sdpo.rec.study.report`; this module forwards every name there and
is removed in 0.4.0.
"""

import warnings

from .study import report as _report

warnings.warn(
    "`trl_sdpo.rec.study_report` is deprecated and will be removed in 0.4.0; import from trl_sdpo.rec.study.report instead.",
    DeprecationWarning,
    stacklevel=2,
)

_MODULES = (_report,)


def __getattr__(name: str):
    for module in _MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
