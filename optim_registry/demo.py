"""Demo data and tiny Llama models for ``optim-registry compare`` and memory estimates.

Everything here works offline: the corpus ships inside the package
(``optim_registry/data/corpus.txt``, public-domain Shakespeare), the tokenizer is a
character vocabulary built from that corpus, and models are built from configs
with random weights (never ``from_pretrained``).  Large presets such as
``"llama-7b"`` are only ever instantiated on the ``meta`` device, so counting
their parameters allocates no memory.

The tiny model trains fastest with ``torch.set_num_threads(1)``: its matrices
are so small that thread synchronisation costs more than it saves, badly so on a
busy machine.  That is left to callers because it is process-wide.

This module imports torch and transformers at module level; the package's
``__init__`` must not import it, so that ``import optim_registry`` stays light.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = [
    "CharTokenizer",
    "ChunkDataset",
    "ModelShape",
    "build_meta_model",
    "build_tiny_llama",
    "load_corpus",
    "make_datasets",
    "model_presets",
    "preset_config",
    "tiny_llama_config",
]

_PACKAGE = "optim_registry"
_CORPUS_PATH = ("data", "corpus.txt")


def load_corpus() -> str:
    """Return the bundled public-domain training text (see ``data/README.md``)."""
    # importlib.resources rather than a path next to __file__, so the corpus is
    # found in wheels, zipped installs and editable installs alike.
    resource = importlib.resources.files(_PACKAGE).joinpath(*_CORPUS_PATH)
    return resource.read_text(encoding="utf-8")


class CharTokenizer:
    """Character-level tokenizer whose vocabulary is the sorted set of a text's characters.

    Sorting makes the id assignment depend only on *which* characters occur, so
    the same corpus always yields the same vocabulary on every machine.
    """

    def __init__(self, text: str) -> None:
        if not text:
            raise ValueError("CharTokenizer needs a non-empty text to build its vocabulary")
        self.chars: tuple[str, ...] = tuple(sorted(set(text)))
        self._stoi: dict[str, int] = {ch: i for i, ch in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[ch] for ch in text]
        except KeyError as exc:
            unknown = sorted(set(text) - self._stoi.keys())
            raise ValueError(f"characters not in the vocabulary: {unknown!r}") from exc

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return "".join(self.chars[int(i)] for i in ids)
        except IndexError as exc:
            raise ValueError(f"token id out of range for a vocabulary of {self.vocab_size}") from exc

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ChunkDataset(Dataset):
    """Fixed-length, non-overlapping token chunks for causal-LM training.

    Items are ``{"input_ids": LongTensor[seq_len], "labels": LongTensor[seq_len]}``,
    which ``transformers``' default data collator stacks into a batch.  Labels equal
    the inputs because Llama shifts them internally when computing the loss.
    """

    def __init__(self, chunks: torch.Tensor) -> None:
        if chunks.dim() != 2 or chunks.dtype != torch.long:
            raise ValueError(f"expected a 2-D long tensor of chunks, got {chunks.dtype} {tuple(chunks.shape)}")
        self.chunks = chunks

    @property
    def seq_len(self) -> int:
        return self.chunks.shape[1]

    def __len__(self) -> int:
        return self.chunks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.chunks[index]
        # Separate tensors so nothing downstream can alias inputs and labels.
        return {"input_ids": row.clone(), "labels": row.clone()}


def make_datasets(
    seq_len: int = 64,
    eval_fraction: float = 0.1,
    tokenizer: CharTokenizer | None = None,
    *,
    text: str | None = None,
) -> tuple[ChunkDataset, ChunkDataset, CharTokenizer]:
    """Split a text into train/eval datasets of non-overlapping ``seq_len`` chunks.

    The first ``1 - eval_fraction`` of the chunks (in text order) train and the
    rest evaluate, so no evaluation character is ever seen in training.  ``text``
    defaults to the bundled corpus; ``tokenizer`` defaults to one built from it.
    """
    if seq_len < 2:
        # A causal LM needs at least one (input, next-token) pair per chunk.
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be strictly between 0 and 1, got {eval_fraction}")
    if text is None:
        text = load_corpus()
    if tokenizer is None:
        tokenizer = CharTokenizer(text)

    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n_chunks = ids.numel() // seq_len
    # Round half up (not Python's round-half-even) so the split is the obvious one.
    n_eval = max(1, int(n_chunks * eval_fraction + 0.5))
    n_train = n_chunks - n_eval
    if n_train < 1:
        raise ValueError(
            f"text of {ids.numel()} tokens is too short for seq_len={seq_len} with eval_fraction={eval_fraction}"
        )
    # The ragged tail (fewer than seq_len tokens) is dropped rather than padded,
    # so every token in a batch contributes to the loss.
    chunks = ids[: n_chunks * seq_len].view(n_chunks, seq_len)
    return ChunkDataset(chunks[:n_train]), ChunkDataset(chunks[n_train:]), tokenizer


def tiny_llama_config(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 128,
) -> LlamaConfig:
    """A Llama config small enough to train for a few hundred steps on a laptop CPU."""
    if hidden_size % heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by heads ({heads})")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        # Untied embeddings keep embedding and lm_head as separate parameters, the
        # layout most optimizer recipes (e.g. Muon's "exclude embeddings and head") assume.
        tie_word_embeddings=False,
        # Character ids 1 and 2 are ordinary characters, not BOS/EOS.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=False,
        dtype=torch.float32,
        # Eager attention is plain matmuls with no kernel selection, so results do
        # not depend on which fused kernels a torch build has; SDPA measured only
        # ~5-10% faster at this size.
        attn_implementation="eager",
    )


def build_tiny_llama(vocab_size: int | None = None, seed: int = 0, **config_kwargs: Any) -> LlamaForCausalLM:
    """Build a randomly initialised fp32 tiny Llama, identical for identical ``seed``.

    ``vocab_size`` defaults to the bundled corpus's character vocabulary;
    ``config_kwargs`` go to :func:`tiny_llama_config`.  The global RNG state is
    left untouched so callers' own seeding is not disturbed.
    """
    if vocab_size is None:
        vocab_size = CharTokenizer(load_corpus()).vocab_size
    config = tiny_llama_config(vocab_size, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    # Explicit, because module construction follows torch's default dtype,
    # which a caller may have changed.
    return model.to(dtype=torch.float32)


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Llama-family model, named as in :class:`LlamaConfig`.

    Frozen so a shared preset cannot be changed by one caller under another;
    call :meth:`to_config` for a fresh, mutable ``LlamaConfig``.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int = 2048

    def to_config(self, **overrides: Any) -> LlamaConfig:
        kwargs: dict[str, Any] = {
            **asdict(self),
            "tie_word_embeddings": False,
            "use_cache": False,
            **overrides,
        }
        return LlamaConfig(**kwargs)


# Shapes of real models for memory estimates.  "tiny" uses a 128-entry vocabulary,
# an upper bound for the ASCII character vocabulary of the bundled corpus.
model_presets: Mapping[str, ModelShape] = MappingProxyType(
    {
        "tiny": ModelShape(
            vocab_size=128,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
        ),
        "llama-7b": ModelShape(
            vocab_size=32000,
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            intermediate_size=11008,
            max_position_embeddings=4096,
        ),
        "llama-70b": ModelShape(
            vocab_size=32000,
            hidden_size=8192,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            intermediate_size=28672,
            max_position_embeddings=4096,
        ),
    }
)


def preset_config(name: str) -> LlamaConfig:
    """A fresh ``LlamaConfig`` for the preset ``name`` (a key of :data:`model_presets`)."""
    try:
        shape = model_presets[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; choose from {sorted(model_presets)}") from None
    return shape.to_config()


def build_meta_model(
    preset_or_config: str | ModelShape | LlamaConfig, *, dtype: torch.dtype = torch.float32
) -> LlamaForCausalLM:
    """Build a Llama on the ``meta`` device: real parameter shapes, no storage.

    Use it to count parameters or to size optimizer state for models far too
    large for this machine.  The weights have no values, so never run it.
    """
    if isinstance(preset_or_config, str):
        config = preset_config(preset_or_config)
    elif isinstance(preset_or_config, ModelShape):
        config = preset_or_config.to_config()
    else:
        config = preset_or_config
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return model.to(dtype=dtype)
