"""
Deprecated import path (0.3.0): `trl_sdpo.rec.experiments` moved to `trl_sdpo.rec.study.runner`, `trl_sdpo.rec.study.stages`, `trl_sdpo.rec.study.models`, `trl_sdpo.rec.study.records`; this module forwards every name there and
is removed in 0.4.0.
"""

import warnings

from .study import models as _models
from .study import records as _records
from .study import runner as _runner
from .study import stages as _stages

warnings.warn(
    "`trl_sdpo.rec.experiments` is deprecated and will be removed in 0.4.0; import from trl_sdpo.rec.study.runner, trl_sdpo.rec.study.stages, trl_sdpo.rec.study.models, trl_sdpo.rec.study.records instead.",
    DeprecationWarning,
    stacklevel=2,
)

_MODULES = (
    _runner,
    _stages,
    _models,
    _records,
)


def __getattr__(name: str):
    for module in _MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
