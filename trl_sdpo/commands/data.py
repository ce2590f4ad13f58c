"""`trl-sdpo data`: build a recommendation dataset's rows and summarize, export or leak-check them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .args import DataCommandArguments, RecDataArguments
from .common import build_rec_examples, load_rec_dataset, make_parser, parse, settings, write_report

DESCRIPTION = """\
Build the rows of one split (history, candidates, target, prompt) and print a summary with a sample prompt;
or write them in the S-DPO reference JSON format (--export FILE); or check whether the candidate lists alone
give the target away (--leak-check). --convert_llara first converts LLaRA's pickled release into --data_dir.

examples:
  trl-sdpo data --dataset movielens --split valid
  trl-sdpo data --dataset movielens --split test --export ml-test.json
  trl-sdpo data --dataset lastfm --data_dir DIR --split valid --sampler sdpo-compat --leak-check --report leak.json
  trl-sdpo data --dataset lastfm --data_dir DIR --convert_llara LLaRA/data/ref/lastfm --trust_pickles
"""


def make_data_parser():
    return make_parser("data", DESCRIPTION, [RecDataArguments, DataCommandArguments])


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"[{message['role']}] {message['content']}" for message in prompt)


def run(command: str, argv: list[str]) -> int:
    data_args, cmd_args = parse(make_data_parser(), argv)
    if cmd_args.leak_check_files:
        report = {"command": "data", "leak_check": _leak_check_files(cmd_args.leak_check_files)}
        write_report(cmd_args.report, {**report, "settings": settings(data_args, cmd_args)})
        return 0
    converted = _convert(data_args, cmd_args) if cmd_args.convert_llara else None
    dataset = load_rec_dataset(data_args)
    report: dict[str, Any] = {
        "command": "data",
        "dataset": dataset.summary(),
        "settings": settings(data_args, cmd_args),
    }
    if converted is not None:
        report["converted"] = converted

    if cmd_args.leak_check:
        from ..rec.leak import leak_check

        split = data_args.split or "valid"
        result = leak_check(
            dataset,
            split=split,
            sampler=data_args.sampler,
            num_candidates=data_args.num_candidates,
            seed=data_args.seed,
        )
        report["leak_check"] = result
        print(
            f"Leak check of {dataset.name} {split} ({data_args.sampler} sampler, fitted on train): {result['verdict']}"
        )
    else:
        split = data_args.split or "train"
        examples = build_rec_examples(dataset, data_args, split, seed=data_args.seed)
        report["split"] = split
        report["num_rows"] = len(examples)
        if cmd_args.export:
            from ..rec.loaders import sdpo_records, write_sdpo_json

            Path(cmd_args.export).parent.mkdir(parents=True, exist_ok=True)
            records = sdpo_records(dataset, [e.row for e in examples], [e.candidate_ids for e in examples])
            write_sdpo_json(cmd_args.export, records)
            report["export"] = str(cmd_args.export)
            print(f"Wrote {len(examples)} {split} rows in the S-DPO reference format to {cmd_args.export}")
        else:
            _print_summary(dataset, split, examples, cmd_args.show)
    write_report(cmd_args.report, report)
    return 0


def _convert(data_args, cmd_args) -> dict[str, int]:
    from ..cli import CommandError
    from ..rec.convert import convert_llara

    if data_args.data_dir is None:
        raise CommandError("--convert_llara writes the converted files into --data_dir: give --data_dir.")
    if not cmd_args.trust_pickles:
        raise CommandError(
            "--convert_llara reads pickled DataFrames, and reading a pickle can run code from it: add "
            "--trust_pickles if the files come from a source you trust."
        )
    counts = convert_llara(cmd_args.convert_llara, data_args.data_dir, trust_pickles=True)
    print(f"Converted {cmd_args.convert_llara} into {data_args.data_dir}: {counts}")
    return counts


def _leak_check_files(paths: list[str]) -> dict[str, Any]:
    from ..cli import CommandError
    from ..rec.leak import leak_check_records
    from ..rec.loaders import load_sdpo_json

    if len(paths) != 2:
        raise CommandError(f"--leak_check_files takes two files, TRAIN.json EVAL.json; got {len(paths)}.")
    result = leak_check_records(load_sdpo_json(paths[0]), load_sdpo_json(paths[1]))
    print(f"Leak check of {paths[1]} (fitted on {paths[0]}): {result['verdict']}")
    return {"train_file": paths[0], "eval_file": paths[1], **result}


def _print_summary(dataset, split: str, examples, show: int) -> None:
    summary = dataset.summary()
    print(f"Dataset {summary['name']}: {summary['num_items']} items; rows per split: {summary['rows']}")
    lengths = [len(example.row.history) for example in examples]
    if examples:
        print(
            f"{split}: {len(examples)} rows built, {len(examples[0].candidates)} candidates each, "
            f"history length {min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.1f})"
        )
    for example in examples[:show]:
        print(f"\n--- sample prompt (row {example.row.index}) ---\n{_prompt_text(example.prompt)}")
        print(f"--- target: {example.target}")
