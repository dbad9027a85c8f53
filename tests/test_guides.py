"""Every TrainingArguments example of the transformers optimizer guides, as written, trains with OptimTrainer.

Sources (huggingface/transformers): ``docs/source/en/optimizers.md`` (the APOLLO, APOLLO-Mini, GrokAdamW,
LOMO, Schedule Free and StableAdamW sections and the guide's base arguments) and
``docs/source/en/trainer.md`` (GaLore, GaLore layer-wise), plus the earlier trainer guide's GaLore
example without ``optim_args``. Each example keeps ``optim``, ``optim_args``, ``optim_target_modules``,
the rates and every other argument as the guide writes them; only ``output_dir``, ``max_steps``,
``report_to``, ``use_cpu`` and logging are adjusted for a few steps on the tiny Llama on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from optim_registry import OptimTrainer, TrainingArguments
from optim_registry.testing import TokenDataset, tiny_model

#: What the guides set, verbatim (output_dir and max_steps are replaced by `_run`).
GUIDES = {
    "optimizers.md: base arguments": dict(
        output_dir="./test-optimizer", max_steps=1000, per_device_train_batch_size=4, logging_strategy="steps",
        logging_steps=1, learning_rate=2e-5, save_strategy="no", run_name="optimizer-name",
    ),
    "optimizers.md: APOLLO": dict(
        output_dir="./test-apollo", max_steps=100, per_device_train_batch_size=2, optim="apollo_adamw",
        optim_target_modules=[r".*.attn.*", r".*.mlp.*"], logging_strategy="steps", logging_steps=1,
        learning_rate=2e-5, save_strategy="no", run_name="apollo_adamw",
    ),
    "optimizers.md: APOLLO-Mini": dict(
        output_dir="./test-apollo_mini", max_steps=100, per_device_train_batch_size=2, optim="apollo_adamw",
        optim_target_modules=[r".*.attn.*", r".*.mlp.*"],
        optim_args="proj=random,rank=1,scale=128.0,scale_type=tensor,update_proj_gap=200",
    ),
    "optimizers.md: GrokAdamW": dict(
        output_dir="./test-grokadamw", max_steps=1000, per_device_train_batch_size=4, optim="grokadamw",
        logging_strategy="steps", logging_steps=1, learning_rate=2e-5, save_strategy="no", run_name="grokadamw",
    ),
    "optimizers.md: LOMO": dict(
        output_dir="./test-lomo", max_steps=1000, per_device_train_batch_size=4, optim="adalomo",
        gradient_checkpointing=True, logging_strategy="steps", logging_steps=1, learning_rate=2e-6,
        save_strategy="no", run_name="adalomo",
    ),
    "optimizers.md: StableAdamW": dict(
        output_dir="./test-stable-adamw", max_steps=1000, per_device_train_batch_size=4, optim="stable_adamw",
        gradient_checkpointing=True, logging_strategy="steps", logging_steps=1, learning_rate=2e-6,
        save_strategy="no", run_name="stable-adamw",
    ),
    "trainer.md: GaLore": dict(
        output_dir="./test-galore", max_steps=100, per_device_train_batch_size=2, optim="galore_adamw",
        optim_target_modules=[r".*.attn.*", r".*.mlp.*"], optim_args="rank=64, update_proj_gap=100, scale=0.10",
    ),
    "trainer.md: GaLore layer-wise": dict(
        output_dir="./test-galore", max_steps=100, per_device_train_batch_size=2, optim="galore_adamw_layerwise",
        optim_target_modules=[r".*.attn.*", r".*.mlp.*"], optim_args="rank=64, update_proj_gap=100, scale=0.10",
    ),
    "trainer.md (earlier): GaLore without optim_args": dict(
        output_dir="./test-galore", max_steps=100, per_device_train_batch_size=2, optim="galore_adamw",
        optim_target_modules=[r".*.attn.*", r".*.mlp.*"],
    ),
}

#: The Schedule Free example names ``schedule_free_radamw``, which is no optimizer name (the stock
#: TrainingArguments refuses it too); it must be refused up front pointing at the real one.
SCHEDULE_FREE_AS_WRITTEN = dict(
    output_dir="./test-schedulefree", max_steps=1000, per_device_train_batch_size=4, optim="schedule_free_radamw",
    lr_scheduler_type="constant", gradient_checkpointing=True, logging_strategy="steps", logging_steps=1,
    learning_rate=2e-6, save_strategy="no", run_name="sfo",
)

STEPS = 3


def _adjusted(example: dict, tmp_path) -> dict:
    """The example with only output location, length, reporting, device and logging changed."""
    return {**example, "output_dir": str(tmp_path), "max_steps": STEPS, "report_to": [], "use_cpu": True,
            "logging_steps": 1, "disable_tqdm": True}


def _train(kwargs: dict) -> tuple[OptimTrainer, dict, torch.nn.Module]:
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = OptimTrainer(model=model, args=TrainingArguments(**kwargs), train_dataset=TokenDataset())
    trainer.train()
    return trainer, before, model


@pytest.mark.parametrize("name", list(GUIDES))
def test_guide_example_trains_as_written(name, tmp_path):
    trainer, before, model = _train(_adjusted(GUIDES[name], tmp_path))
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses), losses
    assert trainer.state.global_step == STEPS
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    moved = [n for n in trainable if not torch.equal(dict(model.named_parameters())[n], before[n])]
    assert moved == trainable, sorted(set(trainable) - set(moved))


def test_guide_schedule_free_typo_is_refused_up_front_naming_the_real_name(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown optim 'schedule_free_radamw'.*schedule_free_radam\b"):
        TrainingArguments(**_adjusted(SCHEDULE_FREE_AS_WRITTEN, tmp_path))


def test_guide_schedule_free_with_the_real_name_trains(tmp_path):
    """RAdam schedule-free makes no update while its rectification term is undefined (the first 5 steps)."""
    fixed = {**SCHEDULE_FREE_AS_WRITTEN, "optim": "schedule_free_radam"}
    trainer, before, model = _train({**_adjusted(fixed, tmp_path), "max_steps": 8})
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())
