"""Subclassing OptimTrainer: add a parameter group in ``create_optimizer`` with ``super()``.

    python examples/subclass_trainer.py
    python examples/subclass_trainer.py --optim lion_32bit --lr 2e-3

The trainer below learns one extra parameter that is not part of the model: a temperature that
scales the logits in the loss. ``create_optimizer`` lets the registry build the optimizer named by
``optim=`` (weight-decay groups, ``optim_args``, target modules ...), then adds the temperature as
its own group with its own learning rate and no weight decay. Because the group is added before the
scheduler is created, the schedule drives it like every other group.

This works for any name whose optimizer supports ``add_param_group`` (nearly all); layer-wise names
accept it too, fused-backward names (LOMO) do not, since they are built around the model.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn

from optim_registry import OptimTrainer, TrainingArguments
from optim_registry.demo import build_tiny_llama, make_datasets


class TemperatureTrainer(OptimTrainer):
    """Learns a logit temperature beside the model, in its own parameter group."""

    def __init__(self, *args, temperature_lr: float = 0.05, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.temperature_lr = temperature_lr

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)  # the registry's optimizer for args.optim
        optimizer.add_param_group(
            {"params": [self.log_temperature], "lr": self.temperature_lr, "weight_decay": 0.0}
        )
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits * self.log_temperature.exp()
        loss = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)
        )
        return (loss, outputs) if return_outputs else loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optim", default="adamw_torch")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=10)
    ns = parser.parse_args()

    torch.set_num_threads(1)  # fastest for the tiny model
    train, _, tokenizer = make_datasets(seq_len=64)
    model = build_tiny_llama(tokenizer.vocab_size, seed=0)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, optim=ns.optim, learning_rate=ns.lr, max_steps=ns.steps,
            max_grad_norm=0.0 if ns.optim.endswith("_layerwise") else 1.0,
            per_device_train_batch_size=16, logging_steps=ns.steps, save_strategy="no", report_to=[],
            use_cpu=True, disable_tqdm=True,
        )
        trainer = TemperatureTrainer(model=model, args=args, train_dataset=train, temperature_lr=0.05)
        trainer.train()

    groups = trainer.optimizer.param_groups
    extra = trainer.get_optimizer_group(trainer.log_temperature)
    print(f"optim={ns.optim!r}: {len(groups)} param groups; the temperature's group started at lr "
          f"{extra.get('initial_lr', extra['lr']):g} and the schedule brought it to {extra['lr']:.3g}; "
          f"weight_decay {extra['weight_decay']}")
    print(f"learned temperature {trainer.log_temperature.exp().item():.4f} (started at 1)")


if __name__ == "__main__":
    main()
