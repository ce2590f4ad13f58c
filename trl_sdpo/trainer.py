"""`SDPOTrainer`: TRL's `DPOTrainer` with one chosen and k rejected completions per row and the S-DPO loss.

Only what assumes exactly two completions is replaced (`docs/design.md` lists the hooks and why, TRL 1.16):
dataset preparation, the collator, the reference log-probs and the loss. Model loading, PEFT, reference-model
handling, precomputation, evaluation, saving and logging are TRL's own; the model card is TRL's with a trl-sdpo
section added (`model_card.py`), and `save_model` writes it too.

A row's path: `_prepare_dataset` validates and tokenizes it (`data.py`), the collator pads prompt and 1+k
completions (`collator.py`), `completion_logps` sums their log-probs (`logprobs.py`), the ranking loss of
`args.ranking_loss` turns policy and reference log-probs into the loss (`loss.py`), and `_log_metrics` records TRL's
metric names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model, parse_flag_from_env, tqdm
from datasets import Dataset, Features, IterableDataset, List, Value, concatenate_datasets
from huggingface_hub import ModelCard
from torch.utils.data import DataLoader
from transformers import AutoProcessor, PreTrainedTokenizerBase, ProcessorMixin
from trl import DPOConfig, DPOTrainer
from trl.models import prepare_deepspeed
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id, global_then_local_main_first, use_adapter

from .collator import DataCollatorForMultiNegativePreference
from .config import SDPOConfig
from .data import parse_tools, row_format, tokenize_completions, validate_row
from .logprobs import add_completion_logps_head, completion_logps
from .loss import RANKING_LOSSES
from .model_card import SDPO_PAPER, SDPO_TAGS, add_sdpo_details

logger = logging.getLogger(__name__)

_TOKENIZED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
# The column types TRL's precompute stores (fp32, as computed).
_REF_FEATURES = Features({"ref_chosen_logps": Value("float32"), "ref_rejected_logps": List(Value("float32"))})


def _refuse_router_aux_loss(model: torch.nn.Module, args: DPOConfig) -> None:
    # DPOTrainer adds an MoE model's load-balancing loss, computed by the model's own forward from router logits over
    # a 2-D padding mask. Our log-prob head runs the backbone itself, with a 4-D mask in the shared layout, so there is
    # no such loss to add: refuse rather than silently train without it.
    text_config = model.config.get_text_config()
    coef = args.router_aux_loss_coef
    coef = getattr(text_config, "router_aux_loss_coef", 0.0) if coef is None else coef
    if hasattr(text_config, "output_router_logits") and coef:
        raise ValueError(
            f"{type(model).__name__} is a Mixture-of-Experts model whose load-balancing auxiliary loss DPOTrainer adds "
            f"(router_aux_loss_coef={coef}); SDPOTrainer does not compute it. Pass `router_aux_loss_coef=0.0` in the "
            "config to train without it."
        )


def _chosen_nll(chosen_logps: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """
    DPOTrainer's `"sft"` term: the negative log-likelihood of the chosen completions, averaged over all their scored
    tokens in the batch (not per row). A completion's first token is scored only when a prompt token precedes it.
    """
    lengths = inputs["completion_attention_mask"][:, 0].sum(-1)
    scored = lengths - ((inputs["prompt_attention_mask"].sum(-1) == 0) & (lengths > 0)).long()
    return -chosen_logps.sum() / scored.sum().clamp(min=1)


def _refuse_cut_ranking(count: int, index: int, args: DPOConfig, dataset_name: str) -> None:
    # `num_negatives` keeps the first k of each list. For the softmax and pairwise losses that is a subset of
    # interchangeable negatives; for Plackett-Luce it would replace the row's ranking by that of its top k+1 items, a
    # different likelihood, so it is refused rather than applied silently.
    num_negatives = getattr(args, "num_negatives", None)
    if getattr(args, "ranking_loss", None) == "plackett_luce" and num_negatives is not None and count > num_negatives:
        raise ValueError(
            f"Row {index} of the {dataset_name} dataset: field `rejected` holds a ranking of {count} completions and "
            f"`num_negatives={num_negatives}` would keep its first {num_negatives}; with "
            "`ranking_loss='plackett_luce'` that changes the ranking the loss is the likelihood of. Set "
            "`num_negatives=None`, or cut the rankings in the dataset if the top of each is what you mean to train on."
        )


def _refuse_unnamed_model(model: Any, ref_model: Any, args: SDPOConfig, processing_class: Any, peft_config) -> None:
    # DPOTrainer loads what it was not given from the model's `name_or_path`: the tokenizer, and the reference unless
    # a PEFT adapter (disabled) or precomputed log-probs stand in for it (under FSDP the precompute loads it too). A
    # model built from a config has an empty `name_or_path`, and transformers then fails with a Hub error about an
    # empty repo id that does not say what to pass.
    if isinstance(model, str) or get_config_model_id(model.config):
        return
    if processing_class is None:
        raise ValueError(
            f"`model` ({type(model).__name__}) has no name or path (`model.config._name_or_path` is empty: it was "
            "built from a config), so its tokenizer cannot be loaded from it. Pass `processing_class=`."
        )
    peft = peft_config is not None or is_peft_model(model)
    precomputed = args.precompute_ref_log_probs and not (args.fsdp or parse_flag_from_env("ACCELERATE_USE_FSDP"))
    if ref_model is None and not peft and not precomputed:
        raise ValueError(
            f"`model` ({type(model).__name__}) has no name or path (`model.config._name_or_path` is empty: it was "
            "built from a config), so no reference copy of it can be loaded. Pass `ref_model=` (a frozen copy of the "
            "starting weights), or train a LoRA adapter with `peft_config=` (the reference is then the model with the "
            "adapter disabled)."
        )


def _as_sdpo_config(args: DPOConfig | None, model: Any) -> SDPOConfig:
    if isinstance(args, SDPOConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else get_config_model_id(model.config)
        return SDPOConfig(f"{str(name).split('/')[-1]}-SDPO")
    # A plain DPOConfig works too: S-DPO's own parameters take their defaults.
    return SDPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DPOConfig) if f.init})


class SDPOTrainer(DPOTrainer):
    """
    Trainer for Softmax-DPO (S-DPO, Chen et al. 2024): DPO with one chosen and k rejected completions per prompt.

    The loss per row is `softplus(logsumexp_j(beta * (r_j - r_w)))` with `r = log pi(y|x) - log pi_ref(y|x)`;
    with one negative it equals [`~trl.DPOTrainer`]'s `"sigmoid"` loss exactly. `SDPOConfig.ranking_loss` selects
    DPO on each (chosen, rejected_j) pair (`"pairwise"`) or the Plackett-Luce likelihood of a ranked list
    (`"plackett_luce"`) instead, and `loss_type=["sigmoid", "sft"]` adds the chosen completion's NLL as
    `DPOTrainer` does. The constructor is `DPOTrainer`'s,
    so an existing DPO script changes by one import and its dataset's `rejected` column becoming a list.

    Not to be confused with TRL's unrelated `trl.experimental.sdpo.SDPOTrainer` (self-distillation).

    Args:
        model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class, compute_metrics,
        callbacks, optimizers, quantization_config, peft_config:
            As for [`~trl.DPOTrainer`]. `args` is an [`SDPOConfig`] (a `DPOConfig` is accepted and converted).
            Datasets hold `prompt`, `chosen` and `rejected` (a list of k completions), in standard (strings) or
            conversational (message lists) format. Bad rows raise a `ValueError` naming the row and the field
            before training starts. The default `data_collator` is [`DataCollatorForMultiNegativePreference`].

    Example:
    ```python
    from datasets import Dataset
    from trl_sdpo import SDPOConfig, SDPOTrainer

    dataset = Dataset.from_list([
        {"prompt": "Pick a film: Heat, Fargo, Babe. Answer:", "chosen": " Fargo", "rejected": [" Heat", " Babe"]},
    ])
    trainer = SDPOTrainer(model, args=SDPOConfig("out", beta=1.0), train_dataset=dataset, processing_class=tok)
    trainer.train()
    ```
    """

    _tag_names = list(SDPO_TAGS)
    _name = "S-DPO"
    _paper = SDPO_PAPER

    def __init__(
        self,
        model,
        ref_model=None,
        args: DPOConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        args = _as_sdpo_config(args, model)
        # The widest k seen across prepared datasets: precomputed reference log-probs are stored at this width so
        # that TRL's precompute can concatenate batches whose k differs.
        self._max_negatives = 0
        self._total_distinct_tokens = 0
        _refuse_unnamed_model(model, ref_model, args, processing_class, peft_config)
        if processing_class is None:
            source = model if isinstance(model, str) else get_config_model_id(model.config)
            processing_class = AutoProcessor.from_pretrained(source, trust_remote_code=args.trust_remote_code)
        tokenizer = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError("`processing_class` must be a tokenizer or a processor with a tokenizer.")
        # DPOTrainer resolves the pad token only when it builds its own collator; ours is built here, so resolve it
        # the same way (`args.pad_token`, then the tokenizer's, then EOS).
        pad_token = args.pad_token or tokenizer.pad_token or tokenizer.eos_token
        if pad_token not in tokenizer.get_vocab():
            raise ValueError(
                f"The specified `pad_token` ({pad_token!r}) is not in the vocabulary of the given `processing_class` "
                f"({type(tokenizer).__name__})."
            )
        tokenizer.pad_token = pad_token
        if isinstance(model, torch.nn.Module):
            _refuse_router_aux_loss(model, args)
            model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        # DPOTrainer picks its pair collator inline when none is given, and its reference precompute runs inside
        # __init__ with `self.data_collator`, so ours must exist before super().__init__.
        if data_collator is None:
            data_collator = DataCollatorForMultiNegativePreference(
                pad_token_id=tokenizer.pad_token_id,
                max_length=args.max_length,
                truncation_mode=args.truncation_mode,
                pad_to_multiple_of=args.pad_to_multiple_of if isinstance(args.pad_to_multiple_of, int) else None,
                num_negatives=args.num_negatives,
            )
        # Our completion log-prob head must be on the models before accelerate wraps them (the reference model is
        # prepared inside DPOTrainer.__init__); models loaded from a path by the parent get it right after.
        for module in (model, ref_model):
            if isinstance(module, torch.nn.Module):
                add_completion_logps_head(module)
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        for module in (self.model, self.ref_model):
            if module is not None:
                add_completion_logps_head(module)
        if isinstance(model, str):  # loaded by the parent: check now what a model object is checked for above
            _refuse_router_aux_loss(self.accelerator.unwrap_model(self.model), args)

    # ------------------------------------------------------------ model card

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        output_dir: str | None = None,
    ) -> None:
        """
        TRL's model card (S-DPO, its paper and citation, the framework versions, the tags) plus what trained the
        model: trl-sdpo and its version, the ranking loss, k, beta ([`~trl_sdpo.model_card.add_sdpo_details`]).

        TRL calls this on every checkpoint and in `push_to_hub`; [`save_model`] calls it too.

        Args:
            model_name (`str`, *optional*): The model's name.
            dataset_name (`str`, *optional*): The Hub id of the training dataset.
            tags (`str` or `list[str]`, *optional*): Tags besides the trainer's own.
            output_dir (`str`, *optional*): A folder to write `README.md` to besides `args.output_dir`, where TRL
                writes it.
        """
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        card = ModelCard.load(Path(self.args.output_dir) / "README.md")
        add_sdpo_details(card, self.args, self._max_negatives, model_name)
        for folder in dict.fromkeys([self.args.output_dir, output_dir or self.args.output_dir]):
            card.save(Path(folder) / "README.md")

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, and the model card beside the weights (TRL writes one on checkpoints only)."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call:  # checkpoints and push_to_hub write the card themselves
            output_dir = output_dir or self.args.output_dir
            model_name = (self.args.hub_model_id or str(output_dir)).rstrip("/").split("/")[-1]
            self.create_model_card(model_name=model_name, output_dir=output_dir)

    # ------------------------------------------------------------------ data

    def _prepare_dataset(
        self,
        dataset: Dataset | IterableDataset,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin,
        args: SDPOConfig,
        dataset_name: str,
    ) -> Dataset | IterableDataset:
        # Runs before Trainer.__init__ (no self.args yet): use `args`. Idempotent, as `evaluate()` calls it again.
        column_names = dataset.column_names or list(next(iter(dataset)).keys())
        if all(c in column_names for c in _TOKENIZED_COLUMNS):
            if isinstance(dataset, Dataset):
                for index, rejected in enumerate(dataset["rejected_ids"]):
                    _refuse_cut_ranking(len(rejected), index, args, dataset_name)
            self._note_negatives(dataset)
            return dataset
        tokenizer = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
        first = next(iter(dataset), None)
        if first is None:
            raise ValueError(f"The {dataset_name} dataset is empty.")
        if "prompt" not in first:
            raise ValueError(
                f"Row 0 of the {dataset_name} dataset: missing field `prompt`. SDPOTrainer needs an explicit prompt "
                "(TRL's implicit-prompt extraction is defined for one chosen/rejected pair only)."
            )
        if "image" in first or "images" in first:
            raise ValueError(
                f"Row 0 of the {dataset_name} dataset has an `image`/`images` field: SDPOTrainer trains text causal "
                "LMs only (DPOTrainer's vision path is not supported), and ignoring the images would train on text "
                "alone. Remove the column to train on the text."
            )
        expected_format = row_format(first, 0)
        num_negatives = getattr(args, "num_negatives", None)

        def tokenize(row: dict[str, Any], index: int) -> dict[str, Any]:
            validate_row(row, index, num_negatives, expected_format)
            _refuse_cut_ranking(len(row["rejected"]), index, args, dataset_name)
            rejected = row["rejected"][:num_negatives]
            template_kwargs = dict(row.get("chat_template_kwargs") or {})
            tools = row.get("tools")
            if tools is not None:
                # As DPOTrainer: a `tools` column may hold JSON strings (Arrow cannot store free-form schemas)
                template_kwargs["tools"] = parse_tools(tools, index, dataset_name)
            prompt_ids, completions = tokenize_completions(
                tokenizer, row["prompt"], [row["chosen"], *rejected], **template_kwargs
            )
            return {"prompt_ids": prompt_ids, "chosen_ids": completions[0], "rejected_ids": completions[1:]}

        map_kwargs: dict[str, Any] = {"with_indices": True}
        if isinstance(dataset, Dataset):  # IterableDataset.map takes neither num_proc nor desc
            map_kwargs.update(num_proc=args.dataset_num_proc, desc=f"Tokenizing {dataset_name} dataset")
        with global_then_local_main_first():
            dataset = dataset.map(tokenize, **map_kwargs)
            if isinstance(dataset, Dataset):
                dataset = self._drop_and_count_truncated(dataset, args, dataset_name)
        self._note_negatives(dataset)
        return dataset

    def _drop_and_count_truncated(self, dataset: Dataset, args: SDPOConfig, dataset_name: str) -> Dataset:
        """Drop rows that truncation would leave without a completion; count the rows it will shorten."""
        if args.max_length is None:
            return dataset
        total = len(dataset)
        prompt_lens = [len(p) for p in dataset["prompt_ids"]]
        longest = [max(len(c), *(len(r) for r in rs)) for c, rs in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
        too_long = sum(p + c > args.max_length for p, c in zip(prompt_lens, longest))
        if args.truncation_mode == "keep_start":
            keep = [i for i, p in enumerate(prompt_lens) if p < args.max_length]
            if not keep:
                raise ValueError(
                    f"The {dataset_name} dataset: every one of its {total} rows has a prompt of at least "
                    f"max_length={args.max_length} tokens (its prompts are {min(prompt_lens)} to {max(prompt_lens)} "
                    "tokens long), so keep_start truncation leaves no row a completion token. "
                    "Raise `max_length`, shorten the prompts, or set `truncation_mode='keep_end'`."
                )
            if len(keep) < total:
                logger.warning(
                    "%s dataset: dropped %d of %d rows whose prompt alone fills max_length=%d (keep_start truncation "
                    "would leave no completion token). Raise `max_length` to keep them.",
                    dataset_name,
                    total - len(keep),
                    total,
                    args.max_length,
                )
                dataset = dataset.select(keep)
                too_long -= total - len(keep)
        if too_long:
            logger.warning(
                "%s dataset: %d of %d rows exceed max_length=%d and will be truncated (%s).",
                dataset_name,
                too_long,
                total,
                args.max_length,
                args.truncation_mode,
            )
        return dataset

    def _note_negatives(self, dataset: Dataset | IterableDataset) -> None:
        if isinstance(dataset, Dataset) and len(dataset) > 0:
            widest = max(len(r) for r in dataset["rejected_ids"])
            self._max_negatives = max(self._max_negatives, widest)

    # ------------------------------------------------------------ log-probs

    def _logps(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1+K) summed completion log-probs: column 0 is the chosen completion."""
        return completion_logps(
            model,
            inputs["prompt_input_ids"],
            inputs["prompt_attention_mask"],
            inputs["completion_input_ids"],
            inputs["completion_attention_mask"],
            prefix_sharing=getattr(self.args, "prefix_sharing", True),
        )

    def compute_ref_log_probs(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Reference log-probs of one padded batch: chosen (B,) and rejected (B, K), K being the widest k of the
        prepared datasets (absent negatives hold 0) so that precomputed batches concatenate.
        """
        adapter_context = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            # New adapter: disabling it gives the base model; retraining an existing adapter: its copy "ref".
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter_context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter_context,
            self.accelerator.autocast(),
        ):
            logps = self._logps(model, inputs)
        width = max(self._max_negatives, logps.shape[1] - 1)
        rejected = torch.nn.functional.pad(logps[:, 1:], (0, width - (logps.shape[1] - 1)))
        return logps[:, 0], rejected

    def _reference_logps(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        k = inputs["rejected_mask"].shape[1]
        if "ref_chosen_logps" in inputs:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"][:, :k]
        chosen, rejected = self.compute_ref_log_probs(self.ref_model or self.model, inputs)
        return chosen, rejected[:, :k]

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """
        Add the reference log-probs of every row of `dataset` as columns `ref_chosen_logps` and `ref_rejected_logps`.

        A dataset that already has both columns is returned as it is: a prepared dataset taken from another trainer's
        `train_dataset` carries its reference with it, and `num_negatives` then reads the first k of each row.

        One process: TRL's own method, unchanged (it caches the columns on disk, keyed by dataset and model). Several
        processes: TRL 1.16 has only rank 0 write that cache file and the other ranks open it at a path they compute
        themselves; for an in-memory dataset (`Dataset.from_list`, no cache files) that path is a random name in each
        process's own temporary folder, so every other rank fails in `__init__`. Here each process computes its shard
        of the rows, the shards are gathered in dataset order, and every process adds the same columns in memory (a
        few floats per row; nothing is written, so it also works across machines without a shared disk).

        Args:
            dataset (`Dataset`): A prepared (tokenized) dataset.
            name (`str`): Its name, for the progress bar.
            batch_size (`int`): Rows per process per forward pass.

        Returns:
            `Dataset`: `dataset` with the two columns added, row `i` holding row `i`'s own values.
        """
        if set(_REF_FEATURES) <= set(dataset.column_names or []):
            # Computed beforehand, e.g. once for several trainers that share rows and reference (the experiment runner
            # trains DPO and S-DPO from one SFT model on the same rows): used as they are. TRL 1.16 would recompute.
            return dataset
        if self.accelerator.num_processes == 1 or isinstance(dataset, IterableDataset):
            return super()._precompute_ref_logps(dataset, name, batch_size)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            shuffle=False,
        )
        # Sharded in order: step s gives rank r the s*num_processes + r-th batch, so gathering a step's batches gives
        # consecutive rows. The sampler repeats the first rows to give every rank a full last batch; gather_for_metrics
        # drops those repeats at the end of the loader (accelerate's `remainder`), so each row is counted once.
        loader = self.accelerator.prepare(loader)
        # As DPOTrainer: before `train` prepares it, a ZeRO model needs an inference engine to place its parameters.
        if self.ref_model is None and self.is_deepspeed_enabled:
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        chosen, rejected = [], []
        for batch in tqdm(loader, desc=f"Computing reference log probs for {name} dataset"):
            batch_chosen, batch_rejected = self.accelerator.gather_for_metrics(
                self.compute_ref_log_probs(model, batch)
            )
            chosen.append(batch_chosen.cpu())
            rejected.append(batch_rejected.cpu())
        # Every batch is padded to the widest k of the prepared datasets (compute_ref_log_probs), so they concatenate.
        chosen, rejected = torch.cat(chosen), torch.cat(rejected)
        if len(chosen) != len(dataset):
            raise RuntimeError(
                f"Reference log-probs of the {name} dataset: gathered {len(chosen)} rows for {len(dataset)} "
                "(the distributed sampler's repeated rows were not dropped)."
            )
        columns = Dataset.from_dict(
            {"ref_chosen_logps": chosen.tolist(), "ref_rejected_logps": rejected.tolist()}, features=_REF_FEATURES
        )
        return concatenate_datasets([dataset, columns], axis=1)

    # ----------------------------------------------------------------- loss

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        logps = self._logps(model, inputs)
        ref_chosen, ref_rejected = self._reference_logps(inputs)
        mask = inputs["rejected_mask"]
        ranking_loss = RANKING_LOSSES[getattr(self.args, "ranking_loss", "softmax")]
        losses, chosen_rewards, rejected_rewards = ranking_loss(
            logps[:, 0], logps[:, 1:], ref_chosen.to(logps), ref_rejected.to(logps), self.beta, mask
        )
        # Summed as DPOTrainer sums its `loss_type` terms: each term's batch mean times its weight
        loss = 0.0
        for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
            term = losses.mean() if loss_type == "sigmoid" else _chosen_nll(logps[:, 0], inputs)
            loss = loss + term * weight
        self._log_metrics(mode, inputs, logps.detach(), chosen_rewards, rejected_rewards, mask)
        if return_outputs:
            reference = torch.cat([ref_chosen.unsqueeze(1), ref_rejected], dim=1).to(logps)
            return loss, {"completion_logps": logps.detach(), "ref_completion_logps": reference.detach()}
        return loss

    def _log_metrics(
        self,
        mode: str,
        inputs: dict[str, torch.Tensor],
        logps: torch.Tensor,
        chosen_rewards: torch.Tensor,
        rejected_rewards: torch.Tensor,
        mask: torch.Tensor,
    ) -> None:
        # Reduce to per-row values before gathering: k may differ between processes.
        counts = mask.sum(1).clamp(min=1).to(logps.dtype)
        masked = rejected_rewards.masked_fill(~mask, float("-inf"))
        hardest = masked.max(1).values
        per_row = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": (rejected_rewards * mask).sum(1) / counts,
            # As the paper counts it: the chosen completion beats every negative
            "rewards/accuracies": (chosen_rewards > hardest).to(logps.dtype),
            "rewards/margins": chosen_rewards - (rejected_rewards * mask).sum(1) / counts,
            "rewards/margins_hardest": chosen_rewards - hardest,
            "logps/chosen": logps[:, 0],
            "logps/rejected": (logps[:, 1:] * mask).sum(1) / counts,
            "num_negatives": mask.sum(1).to(logps.dtype),
        }
        for name, values in per_row.items():
            self._metrics[mode][name].append(self.accelerator.gather_for_metrics(values).float().mean().item())
        if mode == "train":
            # `num_tokens` counts as DPOTrainer does (the attention mask of its prompt+completion rows): each prompt
            # once per present completion. `num_tokens_distinct` counts each prompt once, which is what the
            # shared-prefix layout feeds the model when it is in use.
            present = inputs["completion_attention_mask"].any(-1).sum(1)
            prompt_lengths = inputs["prompt_attention_mask"].sum(1)
            completion_tokens = inputs["completion_attention_mask"].sum()
            counts = torch.stack([(present * prompt_lengths).sum(), prompt_lengths.sum()]) + completion_tokens
            counts = self.accelerator.gather_for_metrics(counts.unsqueeze(0)).sum(0).tolist()
            self._total_train_tokens += counts[0] // getattr(self, "_tp_size", 1)
            self._total_distinct_tokens += counts[1] // getattr(self, "_tp_size", 1)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        self._metrics[mode]["num_tokens_distinct"] = [self._total_distinct_tokens]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        """
        Evaluation loss, and for `compute_metrics` the summed completion log-probs of policy and reference.

        `Trainer.evaluate` asks for predictions only when `compute_metrics` is set. `compute_metrics` then receives an
        `EvalPrediction` whose `predictions` is a tuple `(policy_logps, ref_logps)`, each of shape (N, 1+K), and whose
        `label_ids` is an (N, 1+K) int mask: column 0 is the chosen completion, columns 1..K the negatives, 1 where a
        completion is present (K is the widest k of the prepared datasets; absent negatives hold 0 and mask 0). The
        implicit rewards are `beta * (policy_logps - ref_logps)`. The shape is the same at every k, including k=1,
        where it differs from `DPOTrainer`'s (full-vocabulary logits recomputed by an extra forward pass, deprecated
        in TRL for v2.0; see docs/design.md).
        """
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            if prediction_loss_only:
                return self.compute_loss(model, inputs, return_outputs=False).detach(), None, None
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        # Pad the completion axis to one width for the whole evaluation, so that Trainer concatenates batches without
        # its -100 label padding, which would read as a log-prob.
        width = 1 + max(self._max_negatives, inputs["rejected_mask"].shape[1])
        present = torch.cat([torch.ones_like(inputs["rejected_mask"][:, :1]), inputs["rejected_mask"]], dim=1)

        def widen(values: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(values * present, (0, width - values.shape[1]))

        predictions = (widen(outputs["completion_logps"]), widen(outputs["ref_completion_logps"]))
        return loss.detach(), predictions, widen(present.long())


SoftmaxDPOTrainer = SDPOTrainer
