"""TRL's SFTTrainer with registry optimizers: ``optim="muon"`` in an ``SFTConfig``.

    python examples/trl_sft_muon.py
    python examples/trl_sft_muon.py --optim lion_32bit --lr 2e-3

Two small classes make any TRL trainer registry-aware:

- ``SFTConfig(RegistryArgumentsMixin, trl.SFTConfig)``: the config accepts every registered ``optim``
  and ``lr_scheduler_type`` (TRL's own config only knows transformers' names);
- ``SFTTrainer(OptimRegistryMixin, trl.SFTTrainer)``: the trainer builds the optimizer through the
  registry (parameter groups, ``optim_args``, protocols) and leaves everything else to TRL.

Everything is offline: a tiny Llama built from a config, a character tokenizer built in memory and a
dataset of a few sentences made with ``datasets.Dataset.from_dict``.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass

import torch
import trl
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from optim_registry import OptimRegistryMixin, RegistryArgumentsMixin


@dataclass
class SFTConfig(RegistryArgumentsMixin, trl.SFTConfig):
    """``trl.SFTConfig`` whose ``optim`` / ``lr_scheduler_type`` take every registered name."""


class SFTTrainer(OptimRegistryMixin, trl.SFTTrainer):
    """``trl.SFTTrainer`` whose optimizer and scheduler come from the registry."""


TEXTS = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak.",
    "First Citizen: You are all resolved rather to die than to famish?",
    "All: Resolved. resolved.",
    "First Citizen: First, you know Caius Marcius is chief enemy to the people.",
    "All: We know't, we know't.",
    "First Citizen: Let us kill him, and we'll have corn at our own price.",
    "Second Citizen: One word, good citizens.",
]


def char_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A character-level tokenizer built in memory (no hub access): one id per character."""
    from tokenizers import Tokenizer, models

    specials = ["<pad>", "<eos>", "<unk>"]
    chars = sorted(set("".join(texts)))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    # A BPE model without merges splits text into single characters.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_model(vocab_size: int, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optim", default="muon", help="any registered name (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW-side rate for muon; the Muon rate is muon_lr")
    parser.add_argument("--steps", type=int, default=8)
    ns = parser.parse_args()

    torch.set_num_threads(1)  # fastest for a model this small
    tokenizer = char_tokenizer(TEXTS)
    model = tiny_model(len(tokenizer), tokenizer)
    dataset = Dataset.from_dict({"text": TEXTS})

    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            optim=ns.optim,  # a registry name: trl.SFTConfig alone would refuse "muon"
            learning_rate=ns.lr,
            max_steps=ns.steps,
            per_device_train_batch_size=4,
            max_length=96,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            dataset_num_proc=None,
        )
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    built = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # inside accelerate's wrapper
    print(f"optim={ns.optim!r} built {type(built).__name__} with {len(built.param_groups)} param groups")
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")


if __name__ == "__main__":
    main()
