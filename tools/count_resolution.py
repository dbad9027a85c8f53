"""How often one training run parses ``optim_args`` and enters ``build.py`` (the figures of issue 22's note).

Run from a checkout: ``PYTHONPATH=$PWD python tools/count_resolution.py [NAME [OPTIM_ARGS]]``. Counts, with
``sys.setprofile``: the calls of ``optim_args.to_mapping`` for ``optim_args`` (one per parse), the entries into
``build.py`` from another module, and the calls of ``build.py``'s functions; while creating the arguments,
resolving them with ``get_optimizer_cls_and_kwargs(args, model)``, a whole ``train()`` (2 steps, one
checkpoint), and a ``set_optimizer``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.getcwd())
warnings.simplefilter("ignore")

import optim_registry.build as build  # noqa: E402
import optim_registry.optim_args as optim_args  # noqa: E402
from optim_registry import OptimTrainer  # noqa: E402
from optim_registry.testing import TokenDataset, tiny_model, training_args  # noqa: E402


class Counter:
    def __init__(self) -> None:
        self.parses = self.entries = self.calls = 0

    def __call__(self, frame, event, arg):  # noqa: ANN001, ANN204 - sys.setprofile's signature
        if event != "call":
            return
        code = frame.f_code
        if code is optim_args.to_mapping.__code__ and frame.f_locals.get("where") == "optim_args":
            self.parses += 1
        if code.co_filename == build.__file__:
            self.calls += 1
            if frame.f_back is None or frame.f_back.f_code.co_filename != build.__file__:
                self.entries += 1


def measure(fn) -> Counter:  # noqa: ANN001
    counter = Counter()
    sys.setprofile(counter)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return counter


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "adamw_torch"
    raw = sys.argv[2] if len(sys.argv) > 2 else "foreach=false"
    with tempfile.TemporaryDirectory() as tmp:
        def make():  # noqa: ANN202
            return training_args(name, tmp, raw, max_steps=2, save_strategy="steps", save_steps=2)

        made = []
        c = measure(lambda: made.append(make()))
        print(f"{name} optim_args={raw!r}")
        print(f"  creating TrainingArguments: optim_args parsed {c.parses}x, build.py entered {c.entries}x")
        args, model = made[0], tiny_model()
        c = measure(lambda: build.get_optimizer_cls_and_kwargs(args, model))
        print(f"  get_optimizer_cls_and_kwargs(args, model): optim_args parsed {c.parses}x, build.py entered "
              f"{c.entries}x ({c.calls} calls of its functions)")
        trainer = OptimTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset())
        c = measure(trainer.train)
        print(f"  a whole train() (2 steps, one checkpoint): optim_args parsed {c.parses}x, build.py entered "
              f"{c.entries}x ({c.calls} calls of its functions)")
        c = measure(lambda: args.set_optimizer("sgd", learning_rate=0.1))
        print(f"  set_optimizer('sgd'): optim_args parsed {c.parses}x")


if __name__ == "__main__":
    main()
