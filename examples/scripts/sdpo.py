# /// script
# dependencies = [
#     "trl-sdpo",
#     "peft",
# ]
# ///

"""
`trl-sdpo sdpo` as a script file, for launchers that take a path: the command lives in the package
(`trl_sdpo/commands/sdpo.py`), and `trl-sdpo sdpo --help` lists its flags. Multi-process launching, the effective
batch and the memory of DDP, FSDP2 and DeepSpeed ZeRO: docs/distributed.md.

# One process (CPU or one GPU), settings from a recipe; flags override it
```bash
trl-sdpo sdpo --config examples/scripts/sdpo_recipe.yaml
```

# 4 GPUs, DDP (effective batch = 4 per device x 4 processes x 4 accumulation = 64 rows)
```bash
accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml \
    examples/scripts/sdpo.py --config examples/scripts/sdpo_recipe.yaml
```
(`accelerate launch ... -m trl_sdpo.cli sdpo --config ...` is the same without this file.)
"""

import sys

from trl_sdpo.cli import main

if __name__ == "__main__":
    sys.exit(main(["sdpo", *sys.argv[1:]]))
