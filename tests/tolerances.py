"""Tolerances for comparing fp32 results, derived from fp32 rounding rather than from one machine's output.

Two fp32 computations of one value that add the same terms in another order (AVX-512 or AVX2 kernels, another thread
count, a chunked LM head against a whole one, a shared prompt row against separate rows) round differently. Each
rounding is at most half an ulp, `eps / 2` relative (`eps = 2**-23`, about 1.19e-7), and one forward pass chains a
few dozen of them (matrix products accumulating over the hidden size, softmax, log-softmax, the sum over a
completion's tokens), so the two results agree to a few dozen `eps` of the *magnitude of the terms summed*, not of
the result: `log pi - log pi_ref` of two -11 log-probs can be 0.01 and still carry 1e-6 of rounding.

`FP32_ULPS = 64` eps (7.6e-6 relative) leaves a margin of 4x or more: every comparison here also passes at 16 eps, with
AVX-512 kernels and with AVX2 kernels (forced with `ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
ONEDNN_MAX_CPU_ISA=AVX2`), at 1 and 2 threads, and some fail at 4 eps, so the bound is not loose either. An AVX2-only
CPU measured 1.7e-7 relative (under 2 eps) where a test asked for 1e-6 absolute of -11. Bugs sit orders of
magnitude above: a wrong mask, a token scored twice or a lost completion moves a log-prob by 1e-2 or more. A comparison of one computation with itself (the same call twice, weights that no operation touches) is exact
instead, and says why at the assert.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

FP32_EPS = torch.finfo(torch.float32).eps
FP32_ULPS = 64


def fp32_atol(scale: float, ulps: int = FP32_ULPS) -> float:
    """Absolute tolerance for fp32 values built from terms of magnitude `scale`: `ulps * eps * scale`."""
    return ulps * FP32_EPS * float(scale)


def magnitude(*values) -> float:
    """The largest absolute value among tensors, numbers or sequences of numbers."""
    return max(torch.as_tensor(v, dtype=torch.float64).abs().max().item() for v in values)


def assert_fp32_close(actual, expected, scale: float | None = None, ulps: int = FP32_ULPS, msg: str | None = None):
    """
    Assert that `actual` equals `expected` up to fp32 rounding at magnitude `scale`.

    Args:
        actual, expected: Tensors or numbers (compared in float64).
        scale (`float`, *optional*): Magnitude of the terms the values were summed from, e.g. the log-probs behind a
            reward or a loss. Defaults to the largest magnitude among `expected` (right for sums of same-signed terms,
            such as a completion's log-prob).
        ulps (`int`, *optional*, defaults to `FP32_ULPS`): How many fp32 epsilons of `scale` are allowed.
    """
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    scale = magnitude(expected) if scale is None else scale
    torch.testing.assert_close(actual, expected, atol=fp32_atol(scale, ulps), rtol=0, msg=msg)


def assert_fp32_dicts_close(actual: Mapping, expected: Mapping, ulps: int = FP32_ULPS) -> None:
    """
    Assert that two name -> tensor dicts (parameters, gradients) agree up to fp32 rounding.

    The scale is the largest magnitude over *all* tensors of `expected`: an element's rounding comes from the terms
    it was computed from, which are of the size of the whole computation, not of its own (often near-zero) value.
    """
    assert actual.keys() == expected.keys()
    scale = magnitude(*expected.values())
    for name, value in expected.items():
        assert_fp32_close(actual[name], value, scale=scale, ulps=ulps, msg=name)
