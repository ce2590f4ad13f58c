"""`trl-sdpo results`: regenerate `docs/results.md` from the run JSONs of one or more study folders."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """\
Write the results document of one or more studies from their run JSONs (<dir>/<split>/<method>/seed<seed>.json):
per study and split the machine and package versions, the main table (mean ± std over seeds), the paired bootstrap
comparisons (S-DPO − DPO, S-DPO − SFT-continued, DPO − SFT-continued), the claim check, and every run found.

example:
  trl-sdpo results studies/movielens --output docs/results.md
"""


def make_results_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-sdpo results",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study_dirs", nargs="+", help="Study folders written by `trl-sdpo experiment`.")
    parser.add_argument("--output", default=None, help="Markdown file to write (default: print to stdout).")
    parser.add_argument("--n_boot", "--n-boot", type=int, default=10000, help="Bootstrap resamples per comparison.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap resampling.")
    return parser


def run(command: str, argv: list[str]) -> int:
    from ..rec.study.report import results_markdown

    args = make_results_parser().parse_args(argv)
    text = results_markdown(*args.study_dirs, n_boot=args.n_boot, seed=args.seed)
    if args.output is None:
        print(text, end="")
        return 0
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(output)
    print(f"wrote {output} from {', '.join(args.study_dirs)}")
    return 0
