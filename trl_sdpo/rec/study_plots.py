"""Deprecated import path (0.3.0): moved to `trl_sdpo.rec.study.plots`; removed in 0.4.0."""

from ._moved import moved

__getattr__ = moved(__name__, "trl_sdpo.rec.study.plots")
