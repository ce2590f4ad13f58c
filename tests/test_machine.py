"""What every reported time is recorded with (`trl_sdpo.rec.machine`)."""

import pytest

from trl_sdpo.rec.machine import describe_machine, machine_info, package_versions


def _info(**overrides):
    info = {
        "cpu_model": "AMD EPYC 9R14",
        "avx512": False,
        "cpu_flags": ["avx2", "fma"],
        "logical_cpus": 2,
        "torch_threads": 2,
        "gpu": None,
        "platform": "Linux",
        "load_average": [0.5, 0.5, 0.5],
    }
    return {**info, **overrides}


def test_description_names_the_vector_extensions_and_a_shared_machine():
    assert describe_machine(_info()) == "AMD EPYC 9R14, AVX2, no AVX-512, 2 CPUs (2 torch threads), no GPU"
    avx512 = _info(avx512=True, cpu_flags=["avx2", "avx512f"], gpu="NVIDIA H100")
    assert describe_machine(avx512) == "AMD EPYC 9R14, AVX-512, 2 CPUs (2 torch threads), NVIDIA H100"
    assert describe_machine(_info(load_average=[3.5, 3.0, 2.0])).endswith("no GPU, shared (load 3.5)")


def test_machine_info_and_versions_describe_this_process():
    info = machine_info()
    assert set(_info()) == set(info)
    assert info["avx512"] == ("avx512f" in info["cpu_flags"])
    assert info["logical_cpus"] >= 1 and info["torch_threads"] >= 1
    versions = package_versions()
    assert versions["torch"] and versions["trl"] and versions["python"].count(".") == 2


@pytest.mark.parametrize(
    ("flags", "native"),
    [({"avx2", "fma"}, False), ({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True)],
)
def test_auto_precision_is_bf16_only_where_the_cpu_has_it_natively(monkeypatch, flags, native):
    import torch

    from trl_sdpo.rec import machine

    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("a CPU", flags))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine.cpu_has_native_bf16() is native
    assert machine.resolve_bf16("auto") is native and machine.resolve_bf16(None) is native
    # transformers lets accelerate autocast on a CPU only with `use_cpu`
    assert machine.precision_kwargs("auto") == ({"bf16": True, "use_cpu": True} if native else {"bf16": False})
    assert machine.resolve_bf16(True) is True and machine.resolve_bf16(False) is False  # explicit wins
    with pytest.raises(ValueError, match="true, false or auto"):
        machine.resolve_bf16("fast")
