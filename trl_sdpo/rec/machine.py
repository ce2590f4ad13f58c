"""What machine and which packages produced a number: recorded beside every time and metric this project reports.

CPU speed differs 2-2.5x between machines that look alike (AVX-512 or only AVX2), so a time without the CPU model
and its vector extensions cannot be compared with another one.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

# The extensions that decide fp32/bf16 matrix-product speed on x86 CPUs (what PyTorch's kernels dispatch on).
_SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "trl-sdpo")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                if flags and key == "model name":
                    break
    except OSError:  # not Linux: the model from `platform`, no flags
        pass
    return model, flags


def machine_info() -> dict[str, Any]:
    """
    The machine a number was measured on.

    Returns:
        `dict` with `"cpu_model"`, `"avx512"` (whether the CPU has AVX-512F), `"cpu_flags"` (which of the vector
        extensions that matter for matrix products it has), `"logical_cpus"` (usable by this process),
        `"torch_threads"`, `"gpu"` (the first CUDA device's name, or `None`), `"platform"` and `"load_average"` (the
        1, 5 and 15-minute load averages when recorded, or `None`): a load above the CPU count means other work
        shared the cores and the times beside it are inflated.
    """
    import torch

    model, flags = _cpuinfo()
    try:
        logical_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        logical_cpus = os.cpu_count()
    return {
        "cpu_model": model,
        "avx512": "avx512f" in flags,
        "cpu_flags": [flag for flag in _SIMD_FLAGS if flag in flags],
        "logical_cpus": logical_cpus,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def describe_machine(info: dict[str, Any] | None = None) -> str:
    """One line for a report: `"AMD EPYC 9R14, AVX-512, 2 CPUs (2 torch threads), no GPU"`."""
    info = info or machine_info()
    simd = "AVX-512" if info["avx512"] else ("AVX2, no AVX-512" if "avx2" in info["cpu_flags"] else "no AVX2")
    gpu = info["gpu"] or "no GPU"
    line = f"{info['cpu_model']}, {simd}, {info['logical_cpus']} CPUs ({info['torch_threads']} torch threads), {gpu}"
    load = info.get("load_average")
    if load and load[0] > info["logical_cpus"]:  # other work shared the cores: say so beside any time
        line += f", shared (load {load[0]:.1f})"
    return line


def package_versions() -> dict[str, str | None]:
    """Python's and the main packages' versions (`None` for a package that is not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_has_native_bf16() -> bool:
    """
    Whether this CPU computes bf16 matrix products natively (AVX512_BF16 or AMX), read from its flags.

    Where it does, PyTorch's bf16 GEMMs run ~2.2x faster than fp32 (measured on a 2-core AMD EPYC with AVX512_BF16:
    169 vs 76 GFLOP/s for a 1024x576 @ 576x1536 product); elsewhere bf16 is emulated and slower than fp32.
    """
    return bool({"avx512_bf16", "amx_bf16"} & _cpuinfo()[1])


def resolve_bf16(bf16: bool | str | None) -> bool:
    """
    `bf16` as a yes or no: `"auto"` (or `None`) means bf16 mixed precision where it is native (a bf16 GPU, or a CPU
    with AVX512_BF16 or AMX) and fp32 elsewhere; `True`/`False` are kept.
    """
    if isinstance(bf16, bool):
        return bf16
    if bf16 not in (None, "auto"):
        raise ValueError(f"`bf16` must be true, false or auto, got {bf16!r}.")
    import torch
    from transformers.utils import is_torch_bf16_gpu_available

    if torch.cuda.is_available():
        return is_torch_bf16_gpu_available()
    return cpu_has_native_bf16()


def precision_kwargs(bf16: bool | str | None) -> dict[str, bool]:
    """
    The `TrainingArguments` that give the precision `bf16` asks for (see [`resolve_bf16`]): `{"bf16": ...}`, plus
    `use_cpu=True` for bf16 without a GPU, which transformers requires before it lets accelerate autocast on the CPU.
    The log-softmax of the log-prob heads stays fp32 either way.
    """
    import torch

    on = resolve_bf16(bf16)
    return {"bf16": on, "use_cpu": True} if on and not torch.cuda.is_available() else {"bf16": on}


# PyTorch's single-kernel AdamW: the same update as the default `adamw_torch` (foreach), 4.6x faster on the 135M
# parameters of SmolLM2-135M on 2 AVX-512 cores (0.085 s against 0.395 s a step), CPU and GPU alike.
FAST_OPTIMIZER = "adamw_torch_fused"


def precision_name(bf16: bool) -> str:
    """`"bf16"` (autocast, fp32 master weights) or `"fp32"`, as recorded in run JSONs and printed by the demo."""
    return "bf16" if bf16 else "fp32"
