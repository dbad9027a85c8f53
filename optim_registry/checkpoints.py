"""Trustworthy checkpoints: atomic optimizer state, a manifest written last, checked resume.

Each checkpoint the Trainer writes gets ``optim_registry.json`` beside ``optimizer.pt``, written after
everything else (``trainer_state.json`` included) and atomically. It holds

- ``optimizer``: what the optimizer was built from: registry name, class, typed ``optim_args``, the
  ``optim_target_modules`` weights, and per param group the parameter names and settings as built;
- ``schedule``: the scheduler type, its kwargs, warm-up and the run's length;
- ``files``: every file of the checkpoint with its size, and a sha256 of the optimizer and scheduler state;
  the files inside a ``torch.distributed.checkpoint`` folder (accelerate's FSDP2 ``optimizer_0/`` and
  ``pytorch_model_fsdp_0/``: one file per rank and ``.metadata``) are listed one by one;
- ``world_size`` and ``optimizer_state``: how many ranks wrote it and where and how the optimizer state is
  kept (``optimizer.pt``; FSDP2's ``optimizer.bin`` or ``optimizer_0/``, which resume on any number of ranks).

A checkpoint is *complete* when its manifest is there and every listed file has its listed size, or (for a
checkpoint written without a manifest: older versions, or a run killed between ``trainer_state.json`` and the
manifest) when its files are all readable to the end and every ``torch.distributed.checkpoint`` folder has its
``.metadata`` and every rank's file that it names. ``resume_from_checkpoint=True`` takes the newest
complete checkpoint and warns about newer torn ones; a named torn checkpoint is refused. On resume, another
optimizer, other options, other target modules or another group layout is one ``ValueError`` before any
state is loaded; a changed rate, setting or schedule is a warning naming what will be used. Setting
``trainer.restart_schedule = True`` (or ``OPTIM_REGISTRY_RESTART_SCHEDULE=1``) makes this run's values and a
fresh schedule take over at the resumed step instead (docs/checkpoints.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .spec import plain_name

MANIFEST_NAME = "optim_registry.json"
FORMAT = 1
RESTART_ENV = "OPTIM_REGISTRY_RESTART_SCHEDULE"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
TRAINER_STATE_NAME = "trainer_state.json"
#: Files whose content is checksummed (the ones this module writes atomically; small next to the weights).
CHECKSUMMED = (OPTIMIZER_NAME, SCHEDULER_NAME)
#: What torch.distributed.checkpoint writes last into a folder (rank 0, once every rank's file is written).
DCP_METADATA = ".metadata"
#: Folders accelerate saves FSDP state into with torch.distributed.checkpoint (SHARDED_STATE_DICT).
_DCP_FOLDER = re.compile(r"^(optimizer|pytorch_model_fsdp)_\d+$")
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
#: DeepSpeed ZeRO's optimizer state, one file per rank (``global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt``,
#: ``bf16_`` in front under bf16): checksummed as ``optimizer.pt`` is.
DEEPSPEED_OPTIMIZER_STATE = re.compile(r"optim_states\.pt$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_TRUE = ("1", "true", "yes", "on")


class ResumeWarning(UserWarning):
    """A resume that continues, but not exactly as the arguments say (or past a torn checkpoint)."""


# ----------------------------------------------------------------------------------------- writing


def unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer inside accelerate's wrapper (or the optimizer itself)."""
    while hasattr(optimizer, "optimizer") and not hasattr(optimizer, "optim_registry_name"):
        optimizer = optimizer.optimizer
    return optimizer


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_files(output_dir: str) -> Iterator[str]:
    """A scratch directory inside ``output_dir``; the files written there are renamed into ``output_dir``.

    Each file appears under its final name only once it is whole (written, flushed, renamed), so a run
    killed while saving never leaves a half-written ``optimizer.pt`` that looks like a real one.
    """
    os.makedirs(output_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".optim_registry-", dir=output_dir)
    try:
        yield tmp
        for name in sorted(os.listdir(tmp)):
            src = os.path.join(tmp, name)
            if os.path.isfile(src):
                with open(src, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(src, os.path.join(output_dir, name))
        _fsync_dir(output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str, data: Any) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".optim_registry-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def single_writer(trainer: Any) -> bool:
    """Whether the stock save writes ``optimizer.pt`` / ``scheduler.pt`` from this one process with
    ``torch.save`` (not DeepSpeed, FSDP, XLA or SageMaker, whose ranks write cooperatively)."""
    from transformers.utils import is_sagemaker_mp_enabled, is_torch_xla_available

    return not (
        getattr(trainer, "is_deepspeed_enabled", False)
        or getattr(trainer, "is_fsdp_enabled", False)
        or is_torch_xla_available()
        or is_sagemaker_mp_enabled()
    )


def plain(value: Any) -> Any:
    """A JSON value standing for ``value``, equal for equal settings across two processes."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):  # sorted: a set's order changes from one process to the next
        return sorted((plain(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    enum_value = getattr(value, "value", None)
    if isinstance(enum_value, (str, int)) and not callable(enum_value):
        return enum_value
    numel = getattr(value, "numel", None)
    if callable(numel) and callable(getattr(value, "item", None)):
        return plain(value.item()) if numel() == 1 else f"tensor{tuple(value.shape)}"
    return _ADDRESS.sub("", repr(value))


def group_settings(optimizer: Any) -> list[dict[str, Any]]:
    """Per param group, every setting except the parameters, as JSON values."""
    return [{k: plain(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def asked_optimizer(args: Any, model: Any) -> dict[str, Any]:
    """What ``args`` ask to build (their plan): name, typed options (rates and shared hyperparameters apart),
    targets."""
    from .plan import plan_of
    from .spec import HPARAM_OPTIONS

    plan = plan_of(args)
    shared = set(HPARAM_OPTIONS)
    roles = {o.name: o.role for o in plan.spec.options}
    # A rate is a setting: another value on resume is a warning (settings), not another optimizer.
    options = {k: plain(v) for k, v in sorted(plan.given.items()) if k not in shared and roles.get(k) != "rate"}
    targets = None
    if plan.target_patterns is not None and model is not None:
        from .labels import target_linear_weights

        targets = target_linear_weights(model, plan.target_patterns, subject=f"optim={plan.name!r}")
    return {"name": plan.spec.name, "options": options, "targets": targets}


def optimizer_record(trainer: Any, inner: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": getattr(inner, "optim_registry_name", None),
        "class": f"{type(inner).__module__}.{type(inner).__qualname__}",
        "options": None,
        "targets": None,
        # The rules the groups came from (the layout below is what they produced), for a reader of the record.
        "optim_groups": plain(getattr(trainer.args, "optim_groups", None)),
    }
    if record["name"] is not None and record["name"] == plain_name(trainer.args.optim):
        with contextlib.suppress(Exception):  # the record describes; it never stops a save
            asked = asked_optimizer(trainer.args, trainer.model)
            record["options"], record["targets"] = asked["options"], asked["targets"]
    built = getattr(trainer, "_registry_built_settings", None)
    settings = built if built is not None and len(built) == len(inner.param_groups) else group_settings(inner)
    layout = [[aliases[0] for aliases in group] for group in live_layout(trainer, inner)]
    record["groups"] = [{"count": len(p), "params": p, "settings": s} for p, s in zip(layout, settings, strict=True)]
    return record


def live_layout(trainer: Any, inner: Any) -> list[list[list[str]]]:
    """Each param group's parameters, each with every name it has (a tied head has two): as built (under
    DeepSpeed ZeRO the live groups hold flat partitions with no names), else read from the optimizer."""
    built = getattr(trainer, "_registry_built_layout", None)
    if built is not None and len(built) == len(inner.param_groups):
        return built
    return named_layout(inner, trainer.model)


def named_layout(inner: Any, model: Any) -> list[list[list[str]]]:
    """Each param group of ``inner``: every name of each of its parameters (``labels.group_layout``'s aliases)."""
    from .labels import group_layout

    return [entry["aliases"] for entry in group_layout(inner.param_groups, model)]


def schedule_record(trainer: Any) -> dict[str, Any]:
    args = trainer.args
    return {
        "type": plain(args.lr_scheduler_type),
        "kwargs": plain(getattr(args, "lr_scheduler_kwargs", None) or {}),
        "warmup_steps": plain(getattr(args, "warmup_steps", 0)),
        "warmup_ratio": plain(getattr(args, "warmup_ratio", None)),
        "num_training_steps": plain(getattr(trainer.state, "max_steps", None)),
        "class": type(trainer.lr_scheduler).__name__ if trainer.lr_scheduler is not None else None,
    }


def is_dcp_folder(path: str) -> bool:
    """Whether ``path`` is (or was being written as) a ``torch.distributed.checkpoint`` folder."""
    return os.path.isdir(path) and (
        _DCP_FOLDER.match(os.path.basename(path)) is not None or os.path.isfile(os.path.join(path, DCP_METADATA))
    )


def _checksummed(name: str) -> bool:
    """Optimizer and scheduler state, in every layout: ``optimizer.pt``, FSDP2's ``optimizer.bin`` and
    ``optimizer_0/*``, DeepSpeed's ``*optim_states.pt`` (whose bytes a flipped bit would turn into wrong moments)."""
    return (name in CHECKSUMMED or name.split("/")[0].startswith("optimizer")
            or DEEPSPEED_OPTIMIZER_STATE.search(name) is not None)


def optimizer_state_layout(output_dir: str, world_size: int) -> dict[str, Any] | None:
    """Where a checkpoint keeps the optimizer state and on how many ranks it resumes."""
    names = sorted(os.listdir(output_dir))
    if OPTIMIZER_NAME in names:
        return {"path": OPTIMIZER_NAME, "format": "torch.save", "ranks": world_size}
    for name in names:
        path = os.path.join(output_dir, name)
        if name.startswith("optimizer") and is_dcp_folder(path):
            # Keyed by parameter name, laid out like the parameters: DCP reshards it for any rank count.
            return {"path": name, "format": "torch.distributed.checkpoint", "ranks": world_size, "resumes_on": "any"}
        if name.startswith("optimizer") and name.endswith(".bin") and "_rank" not in name:
            return {"path": name, "format": "full state dict (rank 0)", "ranks": world_size, "resumes_on": "any"}
    rank_files = [n for n in names if n.startswith("optimizer") and "_rank" in n]
    if rank_files:  # accelerate's use_dcp=False: each rank's own part, for the same rank count only
        return {"path": rank_files, "format": "one torch.save per rank", "ranks": world_size,
                "resumes_on": world_size}
    return None


def write_manifest(trainer: Any, output_dir: str) -> None:
    """The manifest of a checkpoint just written: last, atomically, only by the process that saves."""
    if not trainer.args.should_save or not os.path.isdir(output_dir):
        return
    files: dict[str, dict[str, Any]] = {}
    world = int(getattr(trainer.args, "world_size", 1) or 1)
    for name in _checkpoint_files(output_dir):
        path = os.path.join(output_dir, name)
        # Other ranks write their own RNG files, possibly still now: not the saving process's to vouch for.
        if name == MANIFEST_NAME or (world > 1 and os.path.basename(name).startswith("rng_state")):
            continue
        files[name] = _file_entry(path, name)
    manifest: dict[str, Any] = {"format": FORMAT, "files": files, "world_size": world}
    layout = optimizer_state_layout(output_dir, world)
    if layout is not None:
        manifest["optimizer_state"] = layout
    # save_only_model checkpoints hold no optimizer state: nothing to compare a resume against.
    if trainer.optimizer is not None and not getattr(trainer.args, "save_only_model", False):
        manifest["optimizer"] = optimizer_record(trainer, unwrap_optimizer(trainer.optimizer))
        manifest["schedule"] = schedule_record(trainer)
    write_json_atomic(os.path.join(output_dir, MANIFEST_NAME), manifest)


def _file_entry(path: str, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"size": os.path.getsize(path)}
    if _checksummed(name):
        entry["sha256"] = sha256_of(path)
    return entry


def _checkpoint_files(output_dir: str) -> list[str]:
    """The checkpoint's files, as paths relative to it: DeepSpeed's ``global_step*/`` and accelerate's DCP
    folders included (each rank's file and the ``.metadata`` rank 0 writes after all of them).

    Every rank has written its files by now (DeepSpeed's ``save_checkpoint`` and DCP's save end in a
    barrier). Other dot entries are this module's scratch space.
    """
    found = []
    for root, dirs, names in os.walk(output_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(root, output_dir)
        dcp = rel != "." and is_dcp_folder(root)
        found += [n if rel == "." else os.path.join(rel, n) for n in names
                  if not n.startswith(".") or (dcp and n == DCP_METADATA)]
    return sorted(found)


# ----------------------------------------------------------------------------------------- completeness


def read_manifest(checkpoint: str) -> dict[str, Any] | None:
    path = os.path.join(checkpoint, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _zip_problem(path: str) -> str | None:
    # torch.save writes a zip archive whose directory is at the end: a cut file has none.
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"{os.path.basename(path)} is not a whole torch file ({exc})"
    return None


def _safetensors_problem(path: str) -> str | None:
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{name} is cut short ({size} bytes)"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"{name} is cut short: its header alone needs {n + 8} bytes, the file has {size}"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        return f"{name} has an unreadable header ({exc})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        return f"{name} is cut short: its tensors need {8 + n + end} bytes, the file has {size}"
    return None


def _json_problem(path: str) -> str | None:
    try:
        with open(path) as fh:
            json.load(fh)
    except (OSError, ValueError) as exc:
        return f"{os.path.basename(path)} is not whole JSON ({exc})"
    return None


def _dcp_problem(folder: str) -> str | None:
    """Why a ``torch.distributed.checkpoint`` folder is not whole: no ``.metadata`` (rank 0 writes it once every
    rank's file is written), or a rank's file it names missing or shorter than the data it locates there."""
    name = os.path.basename(folder)
    if not os.path.isfile(os.path.join(folder, DCP_METADATA)):
        return f"{name}/{DCP_METADATA} is missing (torch.distributed.checkpoint writes it last)"
    try:
        from torch.distributed.checkpoint import FileSystemReader

        metadata = FileSystemReader(folder).read_metadata()
    except Exception as exc:  # noqa: BLE001 - any failure to read it means it is not whole
        return f"{name}/{DCP_METADATA} is unreadable ({type(exc).__name__}: {exc})"
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for relative, end in sorted(needed.items()):
        path = os.path.join(folder, relative)
        if not os.path.isfile(path):
            return f"{name}/{relative} is missing (one rank's part of the state)"
        if os.path.getsize(path) < end:
            return f"{name}/{relative} is cut short: it has {os.path.getsize(path)} bytes, its data needs {end}"
    return None


def _structure_problem(checkpoint: str) -> str | None:
    """Why a checkpoint without a manifest cannot be resumed (None: every file reads to its end)."""
    state = os.path.join(checkpoint, TRAINER_STATE_NAME)
    if not os.path.isfile(state):
        return f"{TRAINER_STATE_NAME} is missing (it is written last but one)"
    # Dot entries are this module's scratch space, left behind only by a killed save.
    names = {n for n in os.listdir(checkpoint) if not n.startswith(".")}
    weights = {"model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin",
               "model.safetensors.index.json", "pytorch_model.bin.index.json"}
    # FSDP and DeepSpeed keep weights in sub-directories; only plain files are checked in depth.
    has_subdirs = any(os.path.isdir(os.path.join(checkpoint, n)) for n in names)
    if not names & weights and not has_subdirs:
        return "no model weights file is there"
    if (OPTIMIZER_NAME in names) != (SCHEDULER_NAME in names) and not has_subdirs:
        missing = SCHEDULER_NAME if OPTIMIZER_NAME in names else OPTIMIZER_NAME
        return f"{missing} is missing"
    for name in sorted(names):
        path = os.path.join(checkpoint, name)
        if is_dcp_folder(path):
            problem = _dcp_problem(path)
            if problem:
                return problem
            continue
        if not os.path.isfile(path):
            continue
        problem = None
        if name.endswith(".json"):
            problem = _json_problem(path)
        elif name.endswith(".safetensors"):
            problem = _safetensors_problem(path)
        elif name.endswith((".pt", ".pth", ".bin")):
            problem = _zip_problem(path)
        if problem:
            return problem
    return None


def torn_reason(checkpoint: str) -> str | None:
    """Why ``checkpoint`` is not complete, or None when it is (see the module docstring)."""
    if not os.path.isdir(checkpoint):
        return "it is not a directory"
    try:
        manifest = read_manifest(checkpoint)
    except (OSError, ValueError) as exc:
        return f"{MANIFEST_NAME} is unreadable ({exc})"
    if manifest is None:
        return _structure_problem(checkpoint)
    for name, entry in (manifest.get("files") or {}).items():
        path = os.path.join(checkpoint, *name.split("/"))
        if not os.path.isfile(path):
            return f"{name} is missing"
        size = os.path.getsize(path)
        if size != entry.get("size"):
            return f"{name} has {size} bytes, the manifest says {entry.get('size')}"
    return None


def checkpoints_in(folder: str) -> list[str]:
    """The ``checkpoint-N`` directories of ``folder``, newest (highest step) first."""
    found = []
    for name in os.listdir(folder):
        m = _CHECKPOINT_DIR.match(name)
        if m and os.path.isdir(os.path.join(folder, name)):
            found.append((int(m.group(1)), os.path.join(folder, name)))
    return [path for _, path in sorted(found, reverse=True)]


def newest_complete(folder: str) -> str:
    """The newest complete checkpoint of ``folder``, warning (ResumeWarning) about newer torn ones."""
    torn: list[str] = []
    for path in checkpoints_in(folder):
        reason = torn_reason(path)
        if reason is None:
            if torn:
                warnings.warn(
                    f"resume_from_checkpoint=True: skipping the torn checkpoint(s) {'; '.join(torn)}; resuming "
                    f"from {path}, the newest complete one. Delete the torn directories once you no longer "
                    "need them.",
                    ResumeWarning,
                    stacklevel=3,
                )
            return path
        torn.append(f"{path} ({reason})")
    if torn:
        raise ValueError(
            f"No complete checkpoint in {folder} to resume from: {'; '.join(torn)}. Resume from a copy of an "
            "earlier checkpoint, or train without resume_from_checkpoint."
        )
    raise ValueError(f"No valid checkpoint found in output directory ({folder})")


def check_complete(checkpoint: str) -> None:
    """Refuse a named checkpoint that is torn, naming what is wrong and the newest complete sibling."""
    reason = torn_reason(checkpoint)
    if reason is None:
        return
    hint = "Resume from another checkpoint"
    parent = os.path.dirname(os.path.abspath(checkpoint))
    with contextlib.suppress(OSError, ValueError):
        for other in checkpoints_in(parent):
            if os.path.abspath(other) != os.path.abspath(checkpoint) and torn_reason(other) is None:
                hint = f"Resume from {other}, the newest complete checkpoint beside it"
                break
    raise ValueError(
        f"resume_from_checkpoint={checkpoint!r} is a torn checkpoint (the run was probably stopped while "
        f"saving): {reason}. {hint}, or pass resume_from_checkpoint=True to pick the newest complete one."
    )


# ----------------------------------------------------------------------------------------- resume checks


def restart_requested(trainer: Any) -> bool:
    own = getattr(trainer, "restart_schedule", None)
    if own is not None:
        return bool(own)
    return os.environ.get(RESTART_ENV, "").strip().lower() in _TRUE


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."


def check_rank_count(manifest: dict[str, Any], world_size: int, checkpoint: str) -> None:
    """Refuse, before anything is loaded, optimizer state that cannot resume on this number of ranks.

    An FSDP2 checkpoint through ``torch.distributed.checkpoint`` (``optimizer_0/``) or a full state dict
    (``optimizer.bin``) resumes on any number; accelerate's per-rank files (``use_dcp=False``) and a name
    whose record says its FSDP2 state cannot be resharded (``distributed.fsdp2_checkpoint``) only on the
    number that wrote them.
    """
    saved = manifest.get("world_size")
    if not isinstance(saved, int) or saved == world_size:
        return
    name = (manifest.get("optimizer") or {}).get("name")
    layout = manifest.get("optimizer_state") or {}
    why = None
    if isinstance(layout.get("resumes_on"), int):
        why = (f"its optimizer state is one file per rank ({layout.get('path')}, accelerate's use_dcp=False), "
               f"which loads on {saved} ranks only")
    elif name is not None and layout.get("format") != OPTIMIZER_NAME:
        from .registry import optimizers

        try:
            verdict = optimizers.get(name).distributed.fsdp2_checkpoint
        except (KeyError, ValueError, ImportError):
            verdict = True
        if verdict is not True:
            why = f"its optimizer state cannot be resharded ({verdict})"
    if why:
        raise ValueError(
            f"Checkpoint {checkpoint} of optim={name!r} under FSDP2 was written by {saved} ranks and this run has "
            f"{world_size}: {why}. Resume it on {saved} ranks, or save through torch.distributed.checkpoint "
            "(fsdp_config state_dict_type SHARDED_STATE_DICT or FULL_STATE_DICT, without use_dcp=False), which "
            "resumes on any number of ranks."
        )


def _way_out() -> str:
    return (
        "Resume with the arguments the checkpoint was written with, or start a new run (no "
        "resume_from_checkpoint, or load only the model weights from the checkpoint)."
    )


def _whole_model_name(name: str) -> str:
    from .registry import optimizers

    try:
        spec = optimizers.get(name)
    except (KeyError, ValueError, ImportError):  # a plugin no longer installed: its name is all there is
        return name
    return spec.base if spec.layerwise and spec.base else spec.name


def check_asked(record: dict[str, Any], asked: dict[str, Any], checkpoint: str) -> None:
    """The arguments' optimizer against the checkpoint's, before anything is loaded: one ValueError."""
    if record.get("name") is None:
        return
    problems = []
    # A name and its layer-wise twin keep the same state in torch's layout: switching resumes exactly.
    if _whole_model_name(record["name"]) != _whole_model_name(asked["name"]):
        problems.append(f"optim={record['name']!r}, the arguments ask for optim={asked['name']!r}")
    elif record.get("options") is not None and record["options"] != asked["options"]:
        problems.append(
            f"optim={record['name']!r} with optim_args {_show(record['options'])}, the arguments ask for "
            f"optim_args {_show(asked['options'])}"
        )
    elif record.get("targets") is not None and asked.get("targets") is not None and record["targets"] != asked["targets"]:
        old, new = set(record["targets"]), set(asked["targets"])
        problems.append(
            f"optim_target_modules picking {len(old)} weights, the arguments pick {len(new)} "
            f"(only in the checkpoint: {sorted(old - new)[:4]}, only asked now: {sorted(new - old)[:4]})"
        )
    if problems:
        raise ValueError(
            f"Checkpoint {checkpoint} was written by {problems[0]}: its optimizer state cannot be resumed "
            f"by another optimizer or other options. {_way_out()}"
        )


def check_layout(record: dict[str, Any], live: list[list[tuple[str, ...]]], live_settings: list[dict[str, Any]],
                 checkpoint: str) -> None:
    """The built optimizer's param groups against the checkpoint's, before the state is loaded.

    ``live`` holds every name of each built parameter (``labels.group_layout``'s ``aliases``): a checkpoint may
    name a tied tensor by any of them (manifests before issue 22 recorded the last one).
    """
    saved = record.get("groups") or []
    counts_saved = [g["count"] for g in saved]
    counts_live = [len(p) for p in live]
    problem = None
    if counts_saved != counts_live:
        problem = (f"{len(saved)} param group(s) of {counts_saved} parameters, the arguments build "
                   f"{len(live)} of {counts_live}")
    else:
        for i, (g, names, settings) in enumerate(zip(saved, live, live_settings, strict=True)):
            if any(saved_name not in aliases for saved_name, aliases in zip(g["params"], names, strict=True)):
                diff = [(a, b[0]) for a, b in zip(g["params"], names, strict=True) if a not in b][:2]
                problem = f"param group {i} holds other parameters (checkpoint vs now: {diff})"
                break
            if set(g["settings"]) != set(settings):
                problem = (f"param group {i} with settings {sorted(g['settings'])}, the arguments build one "
                           f"with {sorted(settings)}")
                break
    if problem:
        raise ValueError(
            f"Checkpoint {checkpoint} holds optimizer state for {problem}: the group layout differs, so its "
            f"state cannot be loaded. {_way_out()}"
        )


def setting_changes(record: dict[str, Any], live_settings: list[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    """``key -> (checkpoint's values, this run's values)`` for each setting that differs in any group."""
    saved = [g["settings"] for g in record.get("groups") or []]
    changed: dict[str, tuple[Any, Any]] = {}
    for old, new in zip(saved, live_settings, strict=False):
        for key in old:
            if key in new and old[key] != new[key]:
                changed.setdefault(key, ([], []))
    for key in changed:
        olds = [g.get(key) for g in saved]
        news = [g.get(key) for g in live_settings]
        changed[key] = (olds[0] if len(set(map(_show, olds))) == 1 else olds,
                        news[0] if len(set(map(_show, news))) == 1 else news)
    return changed


def schedule_changes(saved: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    if not saved:
        return {}
    keys = ("type", "kwargs", "warmup_steps", "warmup_ratio", "num_training_steps")
    return {k: (saved.get(k), now.get(k)) for k in keys if k in saved and saved.get(k) != now.get(k)}


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in changes.items())


def verify_checksums(checkpoint: str, manifest: dict[str, Any]) -> None:
    """Refuse a state file whose bytes are not the ones saved (a flipped bit loads and spreads NaN)."""
    for name, entry in (manifest.get("files") or {}).items():
        expected = entry.get("sha256")
        path = os.path.join(checkpoint, *name.split("/"))
        if expected is None or not os.path.isfile(path):
            continue
        actual = sha256_of(path)
        if actual != expected:
            raise ValueError(
                f"{path} is corrupted: its sha256 is {actual}, the checkpoint's {MANIFEST_NAME} recorded "
                f"{expected} when it was saved. Loading it would put wrong optimizer state into training. "
                "Resume from another checkpoint, or restore this file from a copy."
            )


def _rate_summary(settings: list[dict[str, Any]]) -> Any:
    rates = [s.get("initial_lr", s.get("lr")) for s in settings]
    return rates[0] if len(set(map(_show, rates))) == 1 else rates


def check_legacy_groups(trainer: Any, checkpoint: str) -> None:
    """For a checkpoint without a record: refuse saved param groups the built optimizer cannot run on.

    torch's ``load_state_dict`` replaces each group by the saved one, so a setting the built optimizer
    reads but the saved groups lack (SGD's ``momentum`` in an AdamW checkpoint) fails as a KeyError in
    the first step. Settings only the saved groups have are harmless (some optimizers add them in step).
    """
    import torch

    path = os.path.join(checkpoint, OPTIMIZER_NAME)
    if trainer.optimizer is None or not single_writer(trainer) or not os.path.isfile(path):
        return
    try:
        # mmap: only the small group dicts are read, not the state tensors
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("param_groups")
    except Exception:  # noqa: BLE001 - the stock load reports its own error
        return
    live = unwrap_optimizer(trainer.optimizer).param_groups
    if not isinstance(saved, list):
        return
    problem = None
    if [len(g.get("params", [])) for g in saved] != [len(g["params"]) for g in live]:
        problem = (f"{len(saved)} param group(s) of {[len(g.get('params', [])) for g in saved]} parameters, "
                   f"the arguments build {len(live)} of {[len(g['params']) for g in live]}")
    else:
        for i, (old, new) in enumerate(zip(saved, live, strict=True)):
            missing = sorted(set(new) - set(old))
            if missing:
                problem = (f"param group {i} without the settings {missing} that the arguments' optimizer "
                           f"({type(unwrap_optimizer(trainer.optimizer)).__name__}) reads: it was written by "
                           "another optimizer")
                break
    if problem:
        raise ValueError(
            f"Checkpoint {checkpoint} (written without {MANIFEST_NAME}) holds optimizer state for {problem}, so "
            f"it cannot be loaded. {_way_out()}"
        )


def before_load(trainer: Any, checkpoint: str) -> dict[str, Any] | None:
    """Every check of a resume that needs the built optimizer; returns what to apply after loading.

    Raises ValueError for another layout or a corrupted state file; warns (ResumeWarning) for changed
    rates, settings or schedule, naming the values that will be used.
    """
    manifest = read_manifest(checkpoint)
    if manifest is None:
        check_legacy_groups(trainer, checkpoint)  # written before manifests: loads as it always did
        return None
    if getattr(trainer, "_registry_verified", None) != checkpoint:
        verify_checksums(checkpoint, manifest)
    record = manifest.get("optimizer")
    if record is None or trainer.optimizer is None:
        return None
    inner = unwrap_optimizer(trainer.optimizer)
    built = getattr(trainer, "_registry_built_settings", None)
    live_settings = built if built is not None and len(built) == len(inner.param_groups) else group_settings(inner)
    check_layout(record, live_layout(trainer, inner), live_settings, checkpoint)
    settings = setting_changes(record, live_settings)
    schedule = schedule_changes(manifest.get("schedule"), schedule_record(trainer))
    restart = restart_requested(trainer)
    if settings or schedule:
        what = _describe({**settings, **schedule})
        if restart:
            remaining = trainer.state.max_steps - trainer.state.global_step
            warnings.warn(
                f"Resuming {checkpoint} with restart_schedule: this run's values take over ({what}); the "
                f"optimizer's moments are kept and the schedule starts again at step "
                f"{trainer.state.global_step}, over the {remaining} steps that remain.",
                ResumeWarning,
                stacklevel=3,
            )
        else:
            rate = _rate_summary([g["settings"] for g in record.get("groups") or []])
            warnings.warn(
                f"Resuming {checkpoint}: the arguments differ from the checkpoint's ({what}). The checkpoint's "
                f"optimizer settings continue (starting rate {_show(rate)}) and its saved schedule state (step "
                f"{trainer.state.global_step}, starting rates) is loaded into this run's scheduler "
                f"({_show(schedule_record(trainer)['type'])}, {trainer.state.max_steps} steps). To use this run's values "
                f"and start the schedule again, set trainer.restart_schedule = True or {RESTART_ENV}=1 "
                "(docs/checkpoints.md).",
                ResumeWarning,
                stacklevel=3,
            )
    if not restart:
        return None
    keys = set(settings) | {"lr", "initial_lr"}
    return {"groups": [{k: g[k] for k in keys if k in g} for g in inner.param_groups]}


def check_built_layout(trainer: Any, checkpoint: str) -> None:
    """The optimizer just built against the checkpoint's layout, before DeepSpeed loads any state into it."""
    record = (read_manifest(checkpoint) or {}).get("optimizer")
    layout, settings = trainer._registry_built_layout, trainer._registry_built_settings
    if record is not None and layout is not None and settings is not None:
        check_layout(record, layout, settings, checkpoint)


def after_load(trainer: Any, plan: dict[str, Any] | None) -> None:
    """restart_schedule: put this run's values back after the state load, and start a fresh schedule."""
    if plan is None:
        return
    inner = unwrap_optimizer(trainer.optimizer)
    for group, values in zip(inner.param_groups, plan["groups"], strict=True):
        group.update(values)
        if "initial_lr" in values:
            group["lr"] = values["initial_lr"]
    remaining = max(1, trainer.state.max_steps - trainer.state.global_step)
    trainer.lr_scheduler = None
    trainer.create_scheduler(num_training_steps=remaining, optimizer=trainer.optimizer)


# ----------------------------------------------------------------------------------------- the mixin


if TYPE_CHECKING:
    import transformers

    # Type checkers see the mixins as the Trainer they are mixed into; at run time they add no base.
    _TrainerBase = transformers.Trainer
else:
    _TrainerBase = object


class CheckpointMixin(_TrainerBase):
    """The Trainer overrides that make checkpoints atomic, complete-or-skipped and checked on resume.

    Every method calls ``super()``; OptimRegistryMixin inherits it, so any Trainer subclass gets it.
    """

    #: True: on resume, this run's rates, settings and a fresh schedule take over (moments are kept).
    #: None: read ``OPTIM_REGISTRY_RESTART_SCHEDULE``. False: the checkpoint's values continue.
    restart_schedule: bool | None = None

    _registry_built_settings: list[dict[str, Any]] | None = None
    _registry_built_layout: list[list[list[str]]] | None = None
    _registry_verified: str | None = None
    _registry_resuming: str | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True and os.path.isdir(self.args.output_dir):
            resume_from_checkpoint = newest_complete(self.args.output_dir)
        if isinstance(resume_from_checkpoint, (str, os.PathLike)) and resume_from_checkpoint:
            resume_from_checkpoint = os.fspath(resume_from_checkpoint)
            check_complete(resume_from_checkpoint)
            manifest = read_manifest(resume_from_checkpoint)
            if manifest is not None:
                # Before the weights are loaded: a refused resume leaves the model as it was.
                verify_checksums(resume_from_checkpoint, manifest)
                check_rank_count(manifest, int(getattr(self.args, "world_size", 1) or 1), resume_from_checkpoint)
                self._registry_verified = resume_from_checkpoint
            self._check_asked(resume_from_checkpoint)
        self._registry_resuming = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._registry_resuming = None

    def _check_asked(self, checkpoint: str) -> None:
        # Only when the registry builds the optimizer from the arguments (not optimizers=(...) given).
        if getattr(self, "optimizer", None) is not None or getattr(self, "optimizer_cls_and_kwargs", None):
            return
        manifest = read_manifest(checkpoint)
        record = (manifest or {}).get("optimizer")
        if record is None or record.get("name") is None:
            return
        check_asked(record, asked_optimizer(self.args, self.model), checkpoint)

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        fresh = getattr(self, "optimizer", None) is None
        optimizer = super().create_optimizer(*args, **kwargs)
        inner = unwrap_optimizer(self.optimizer)
        # A DeepSpeed config's own optimizer is accelerate's DummyOptim until deepspeed.initialize: no groups.
        if (fresh or self._registry_built_settings is None) and hasattr(inner, "param_groups"):
            # The settings and parameters as built, before any schedule or step moves them (or ZeRO replaces
            # the parameters by flat partitions): what a resume compares.
            self._registry_built_settings = group_settings(inner)
            self._registry_built_layout = named_layout(inner, self.model)
            if getattr(self, "is_deepspeed_enabled", False) and self._registry_resuming:
                # DeepSpeed loads its state with the model, before _load_optimizer_and_scheduler: check now.
                check_built_layout(self, self._registry_resuming)
        return optimizer

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not single_writer(self) or not self.args.should_save:
            return super()._save_optimizer_and_scheduler(output_dir)
        with atomic_files(output_dir) as scratch:
            super()._save_optimizer_and_scheduler(scratch)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = self._get_output_dir(trial=trial)
        write_manifest(self, os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        plan = before_load(self, checkpoint) if checkpoint is not None else None
        super()._load_optimizer_and_scheduler(checkpoint)
        after_load(self, plan)
