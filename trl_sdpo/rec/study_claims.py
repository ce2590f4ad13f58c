"""
Deprecated import path (0.3.0): `trl_sdpo.rec.study_claims` moved to `trl_sdpo.rec.study.claims`; this module forwards every name there and
is removed in 0.4.0.
"""

import warnings

from .study import claims as _claims

warnings.warn(
    "`trl_sdpo.rec.study_claims` is deprecated and will be removed in 0.4.0; import from trl_sdpo.rec.study.claims instead.",
    DeprecationWarning,
    stacklevel=2,
)

_MODULES = (_claims,)


def __getattr__(name: str):
    for module in _MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
