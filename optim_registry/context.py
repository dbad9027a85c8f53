"""What a builder gets: ``BuildContext`` (the record, the arguments' plan, the model, its labels and groups) and what
a Trainer knows beyond the arguments (``TrainerFacts``).

Its own module so that the families' builders and the engines' factories can name it without importing the build
(which imports every part): ``build.make_context`` makes one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import deps
from .runnable import on_cpu
from .spec import OptimizerSpec

if TYPE_CHECKING:
    from .labels import ParamTable
    from .plan import Plan


@dataclass(frozen=True)
class TrainerFacts:
    """What a Trainer knows about the build beyond the arguments (unset: ``None``), passed explicitly."""

    #: The weight-decay parameter names from the Trainer's ``get_decay_parameter_names`` (users may override it).
    decay_names: frozenset[str] | None = None
    #: The run's total optimizer steps (for ratios such as warm-up 0.1).
    training_steps: int | None = None


NO_FACTS = TrainerFacts()


@dataclass
class BuildContext:
    """What a builder gets: the record, the arguments, the model and everything already computed."""

    spec: OptimizerSpec
    args: Any
    model: Any
    options: dict[str, Any]  # every declared option, typed: what optim_args gave, else the record's default
    hparams: dict[str, Any]  # lr, betas, eps, weight_decay after optim_args overrides
    kwargs: dict[str, Any]  # generic constructor kwargs: lr, hparams, fixed, the options that are sent
    groups: list[dict[str, Any]] | None = None  # param groups (weight decay / targets / routing / rules)
    given: dict[str, Any] = field(default_factory=dict)  # exactly what optim_args said, typed
    rules: tuple[Any, ...] = ()  # parsed optim_groups rules (already applied to ``groups``)
    plan: Plan | None = None  # what the arguments mean (every field above that comes from them is its copy)
    facts: TrainerFacts = NO_FACTS  # what the Trainer said: its decay names, the run's length
    labels: ParamTable | None = None  # each parameter's labels (decay, target, kind, LoRA, rules), with a model

    def target(self) -> Any:
        return load_target(self.spec)

    def with_groups(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` plus ``params=self.groups`` when the Trainer's own groups would be wrong.

        That is when target modules, routing or ``optim_groups`` split the parameters, or ``optim_args`` overrode ``weight_decay``
        (the Trainer builds its groups from ``args.weight_decay``). Otherwise the Trainer builds the
        groups, as transformers does, honouring an overridden ``get_decay_parameter_names``.
        """
        if self.groups is not None and (
            self.spec.target_modules or "weight_decay" in self.given or self.rules or self.spec.routing
        ):
            kwargs["params"] = self.groups
        return kwargs

    @property
    def num_training_steps(self) -> int | None:
        """Total optimizer steps of the run: known inside a Trainer, else ``args.max_steps`` if set."""
        if self.facts.training_steps is not None:
            return self.facts.training_steps
        return self.plan.max_steps if self.plan is not None else None

    @property
    def on_cpu(self) -> bool:
        """Whether this run's parameters live on the CPU (``runnable.on_cpu``: the one device rule)."""
        return on_cpu(self.model, self.args)

    def require_model(self) -> Any:
        if self.model is None:
            raise ValueError(f"optim={self.spec.name!r} needs the model: pass `model=` when resolving it")
        return self.model


def load_target(spec: OptimizerSpec) -> Any:
    target = spec.target
    return deps.import_target(spec.name, target, spec.requires) if isinstance(target, str) else target
