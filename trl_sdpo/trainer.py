"""`SDPOTrainer`: TRL's `DPOTrainer` with one chosen and k rejected completions per row and the S-DPO loss.

Only what assumes exactly two completions is replaced (`docs/design.md` lists the hooks and why, TRL 1.16):
dataset preparation, the collator, the reference log-probs and the loss. Model loading, PEFT, reference-model
handling, precomputation, evaluation, saving and logging are TRL's own.

A row's path: `_prepare_dataset` validates and tokenizes it (`data.py`), the collator pads prompt and 1+k
completions (`collator.py`), `completion_logps` sums their log-probs (`logprobs.py`), `sdpo_loss` turns policy and
reference log-probs into the loss (`loss.py`), and `_log_metrics` records TRL's metric names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any

import torch
from accelerate.utils import is_peft_model, tqdm
from datasets import Dataset, Features, IterableDataset, List, Value, concatenate_datasets
from torch.utils.data import DataLoader
from transformers import AutoProcessor, PreTrainedTokenizerBase, ProcessorMixin
from trl import DPOConfig, DPOTrainer
from trl.models import prepare_deepspeed
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id, global_then_local_main_first, use_adapter

from .collator import DataCollatorForMultiNegativePreference
from .config import SDPOConfig
from .data import row_format, tokenize_completions, validate_row
from .logprobs import add_completion_logps_head, completion_logps
from .loss import sdpo_loss

logger = logging.getLogger(__name__)

_TOKENIZED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
# The column types TRL's precompute stores (fp32, as computed).
_REF_FEATURES = Features({"ref_chosen_logps": Value("float32"), "ref_rejected_logps": List(Value("float32"))})


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
    with one negative it equals [`~trl.DPOTrainer`]'s `"sigmoid"` loss exactly. The constructor is `DPOTrainer`'s,
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

    _tag_names = ["trl", "sdpo", "softmax-dpo"]
    _name = "S-DPO"
    _paper = {
        "title": "On Softmax Direct Preference Optimization for Recommendation",
        "id": "2406.09215",
        "citation": (
            "@inproceedings{chen2024softmax,\n"
            "    title   = {{On Softmax Direct Preference Optimization for Recommendation}},\n"
            "    author  = {Yuxin Chen and Junfei Tan and An Zhang and Zhengyi Yang and Leheng Sheng and Enzhi Zhang"
            " and Xiang Wang and Tat-Seng Chua},\n"
            "    booktitle = {Advances in Neural Information Processing Systems},\n"
            "    year    = 2024\n"
            "}"
        ),
    }

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
        if processing_class is None:
            source = model if isinstance(model, str) else get_config_model_id(model.config)
            processing_class = AutoProcessor.from_pretrained(source, trust_remote_code=args.trust_remote_code)
        tokenizer = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError("`processing_class` must be a tokenizer or a processor with a tokenizer.")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
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
        expected_format = row_format(first, 0)
        num_negatives = getattr(args, "num_negatives", None)

        def tokenize(row: dict[str, Any], index: int) -> dict[str, Any]:
            validate_row(row, index, num_negatives, expected_format)
            rejected = row["rejected"][:num_negatives]
            template_kwargs = dict(row.get("chat_template_kwargs") or {})
            if row.get("tools") is not None:
                template_kwargs["tools"] = row["tools"]
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
        losses, chosen_rewards, rejected_rewards = sdpo_loss(
            logps[:, 0], logps[:, 1:], ref_chosen.to(logps), ref_rejected.to(logps), self.beta, mask
        )
        loss = losses.mean()
        self._log_metrics(mode, inputs, logps.detach(), chosen_rewards, rejected_rewards, mask)
        if return_outputs:
            return loss, {"completion_logps": logps.detach()}
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
            # Distinct tokens in the batch: each prompt once, every completion once.
            tokens = inputs["prompt_attention_mask"].sum() + inputs["completion_attention_mask"].sum()
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(tokens).sum().item())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        # There are no logits to return (log-probs are computed without them); evaluation reports loss and metrics.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, return_outputs=False)
        return loss.detach(), None, None


SoftmaxDPOTrainer = SDPOTrainer
