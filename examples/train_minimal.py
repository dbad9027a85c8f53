"""The smallest complete training run: OptimTrainer, any registered optimizer, the bundled text.

    python examples/train_minimal.py --optim adamw_torch
    python examples/train_minimal.py --optim galore_adamw --optim-args "rank=16" --target-modules self_attn,mlp
    python examples/train_minimal.py --optim sgd_layerwise --steps 20

Everything is offline: the corpus ships with optim_registry, the tokenizer is its character set and
the model is a tiny Llama built from a config. `optim-registry list --available` shows the names that
can run on this machine.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from optim_registry import OptimTrainer, TrainingArguments
from optim_registry.demo import build_tiny_llama, make_datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optim", default="adamw_torch", help="any registered name (default: %(default)s)")
    parser.add_argument("--optim-args", default=None, help='e.g. "momentum=0.9,nesterov=true"')
    parser.add_argument("--target-modules", default=None, help="comma-separated, for GaLore / APOLLO (e.g. self_attn,mlp)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=10)
    ns = parser.parse_args()

    # The tiny model's matrices are so small that one thread is the fastest setting.
    torch.set_num_threads(1)
    train, evaluation, tokenizer = make_datasets(seq_len=64)
    model = build_tiny_llama(tokenizer.vocab_size, seed=0)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            optim=ns.optim,
            optim_args=ns.optim_args,
            optim_target_modules=ns.target_modules.split(",") if ns.target_modules else None,
            # Layer-wise names step inside backward, where a global gradient norm cannot be clipped.
            max_grad_norm=0.0 if ns.optim.endswith("_layerwise") else 1.0,
            learning_rate=ns.lr,
            max_steps=ns.steps,
            per_device_train_batch_size=16,
            logging_steps=max(1, ns.steps // 5),
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = OptimTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation)
        trainer.train()
        metrics = trainer.evaluate()

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    built = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # inside accelerate's wrapper
    print(f"optim={ns.optim!r} built {type(built).__name__}")
    print(f"first logged loss {losses[0]:.3f}, last {losses[-1]:.3f}, eval loss {metrics['eval_loss']:.3f}")


if __name__ == "__main__":
    main()
