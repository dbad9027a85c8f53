"""Tests for the bundled corpus, tokenizer, datasets and tiny/meta Llama builders."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainingArguments, default_data_collator

from optim_registry import demo
from optim_registry.demo import (
    CharTokenizer,
    build_meta_model,
    build_tiny_llama,
    load_corpus,
    make_datasets,
    model_presets,
    preset_config,
    tiny_llama_config,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    # The tiny model's matmuls are too small to gain from threads; on a busy
    # machine, thread synchronisation made Trainer steps ~8x slower than one thread.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def corpus() -> str:
    return load_corpus()


@pytest.fixture(scope="module")
def datasets() -> tuple[demo.ChunkDataset, demo.ChunkDataset, CharTokenizer]:
    return make_datasets(seq_len=64, eval_fraction=0.1)


def _param_counts(model: torch.nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return len(params), sum(p.numel() for p in params)


def _training_args(tmp_path: Path, **overrides: object) -> TrainingArguments:
    kwargs: dict[str, object] = {
        "output_dir": str(tmp_path / "out"),
        "optim": "adamw_torch",
        "per_device_train_batch_size": 8,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
        **overrides,
    }
    return TrainingArguments(**kwargs)


def _logged_losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# --- corpus ---------------------------------------------------------------------


def test_corpus_is_bundled_and_large_enough(corpus: str) -> None:
    assert len(corpus.encode("utf-8")) > 50_000
    assert corpus.startswith("First Citizen:")
    assert corpus.isascii()


def test_corpus_readme_states_source_and_licence() -> None:
    readme = Path(demo.__file__).parent / "data" / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert "public domain" in text.lower()
    assert "karpathy/char-rnn" in text


# --- tokenizer ------------------------------------------------------------------


def test_tokenizer_round_trips_corpus(corpus: str) -> None:
    tok = CharTokenizer(corpus)
    ids = tok.encode(corpus)
    assert len(ids) == len(corpus)
    assert min(ids) == 0
    assert max(ids) == tok.vocab_size - 1
    assert tok.decode(ids) == corpus


def test_tokenizer_vocab_is_sorted_and_deterministic(corpus: str) -> None:
    tok = CharTokenizer(corpus)
    assert list(tok.chars) == sorted(set(corpus))
    assert CharTokenizer(corpus).chars == tok.chars
    # Order of appearance must not matter, only the set of characters.
    assert CharTokenizer("cba").chars == CharTokenizer("abc").chars == ("a", "b", "c")
    assert CharTokenizer("hello").encode("hello") == [1, 0, 2, 2, 3]


def test_tokenizer_rejects_unknown_input() -> None:
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([0, 3])
    with pytest.raises(ValueError):
        CharTokenizer("")


# --- datasets -------------------------------------------------------------------


def test_datasets_shapes(
    datasets: tuple[demo.ChunkDataset, demo.ChunkDataset, CharTokenizer],
) -> None:
    train, eval_, tok = datasets
    assert isinstance(train, torch.utils.data.Dataset)
    n_chunks = len(train) + len(eval_)
    assert len(eval_) == int(n_chunks * 0.1 + 0.5)
    for ds in (train, eval_):
        item = ds[0]
        assert set(item) == {"input_ids", "labels"}
        for value in item.values():
            assert value.shape == (64,)
            assert value.dtype == torch.long
        assert torch.equal(item["input_ids"], item["labels"])
        assert item["input_ids"].data_ptr() != item["labels"].data_ptr()
        assert int(item["input_ids"].max()) < tok.vocab_size


def test_datasets_are_contiguous_and_disjoint(
    corpus: str, datasets: tuple[demo.ChunkDataset, demo.ChunkDataset, CharTokenizer]
) -> None:
    train, eval_, tok = datasets
    train_text = tok.decode(torch.cat([train[i]["input_ids"] for i in range(len(train))]).tolist())
    eval_text = tok.decode(torch.cat([eval_[i]["input_ids"] for i in range(len(eval_))]).tolist())
    # Train is exactly the leading chunks, eval the chunks right after: every
    # corpus position lands in at most one split, and train comes first.
    assert train_text + eval_text == corpus[: len(train_text) + len(eval_text)]
    assert len(train_text) == 64 * len(train)
    assert len(corpus) - (len(train_text) + len(eval_text)) < 64


def test_datasets_work_with_default_collator(
    datasets: tuple[demo.ChunkDataset, demo.ChunkDataset, CharTokenizer],
) -> None:
    train, _, _ = datasets
    batch = default_data_collator([train[i] for i in range(8)])
    assert batch["input_ids"].shape == (8, 64)
    assert batch["labels"].shape == (8, 64)


def test_make_datasets_on_custom_text_and_tokenizer() -> None:
    tok = CharTokenizer("abcdefghij")
    train, eval_, same_tok = make_datasets(seq_len=4, eval_fraction=0.25, tokenizer=tok, text="abcdefghij" * 4)
    assert same_tok is tok
    assert (len(train), len(eval_)) == (7, 3)  # 2.5 eval chunks round up
    assert tok.decode(train[0]["input_ids"].tolist()) == "abcd"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 1}, "seq_len"),
        ({"eval_fraction": 0.0}, "eval_fraction"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"seq_len": 64, "text": "too short"}, "too short"),
    ],
)
def test_make_datasets_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_datasets(**kwargs)  # type: ignore[arg-type]


# --- tiny model -----------------------------------------------------------------


def test_tiny_llama_config_shape() -> None:
    config = tiny_llama_config(61)
    assert config.vocab_size == 61
    assert (config.hidden_size, config.num_hidden_layers) == (64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.intermediate_size == 128
    assert config.max_position_embeddings == 128
    assert config.tie_word_embeddings is False
    with pytest.raises(ValueError, match="divisible"):
        tiny_llama_config(61, hidden_size=63)
    with pytest.raises(ValueError, match="divisible"):
        tiny_llama_config(61, kv_heads=3)


def test_build_tiny_llama_is_seeded_fp32_and_untied(corpus: str) -> None:
    rng_before = torch.random.get_rng_state()
    model = build_tiny_llama(seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)

    assert model.config.vocab_size == CharTokenizer(corpus).vocab_size
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.get_input_embeddings().weight is not model.get_output_embeddings().weight

    same = build_tiny_llama(seed=0)
    other = build_tiny_llama(seed=1)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, same.state_dict()[name]), name
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_build_tiny_llama_accepts_config_overrides() -> None:
    model = build_tiny_llama(vocab_size=10, layers=1, hidden_size=32, heads=2, kv_heads=1)
    assert model.config.num_hidden_layers == 1
    assert model.lm_head.weight.shape == (10, 32)


def test_trainer_step_on_tiny_model(
    tmp_path: Path, datasets: tuple[demo.ChunkDataset, demo.ChunkDataset, CharTokenizer]
) -> None:
    train, _, tok = datasets
    model = build_tiny_llama(tok.vocab_size)
    before = model.lm_head.weight.detach().clone()
    trainer = Trainer(
        model=model,
        args=_training_args(tmp_path, max_steps=3),
        train_dataset=train,
    )
    result = trainer.train()
    assert trainer.state.global_step == 3
    assert math.isfinite(result.training_loss)
    assert all(math.isfinite(loss) for loss in _logged_losses(trainer))
    assert not torch.equal(model.lm_head.weight.detach(), before)


def test_trainer_loss_decreases(
    tmp_path: Path, datasets: tuple[demo.ChunkDataset, demo.ChunkDataset, CharTokenizer]
) -> None:
    train, eval_, tok = datasets
    trainer = Trainer(
        model=build_tiny_llama(tok.vocab_size),
        args=_training_args(tmp_path, max_steps=20, learning_rate=3e-3, lr_scheduler_type="constant"),
        train_dataset=train,
    )
    trainer.train()
    losses = _logged_losses(trainer)
    assert len(losses) == 20
    assert all(math.isfinite(loss) for loss in losses)
    # Untrained, the loss is about ln(vocab_size); a working setup gets well below it.
    assert losses[0] == pytest.approx(math.log(tok.vocab_size), abs=0.5)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.5, losses
    eval_loss = trainer.evaluate(eval_)["eval_loss"]
    assert eval_loss < first - 0.3


# --- presets and meta models ----------------------------------------------------


def test_model_presets() -> None:
    assert {"tiny", "llama-7b", "llama-70b"} <= set(model_presets)
    shape = model_presets["llama-70b"]
    assert (shape.hidden_size, shape.num_hidden_layers) == (8192, 80)
    assert (shape.num_attention_heads, shape.num_key_value_heads) == (64, 8)
    assert (shape.intermediate_size, shape.vocab_size) == (28672, 32000)
    with pytest.raises(TypeError):
        model_presets["new"] = shape  # type: ignore[index]
    tiny, default = model_presets["tiny"].to_config(), tiny_llama_config(128)
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        assert getattr(tiny, field) == getattr(default, field), field
    assert (tiny.intermediate_size, tiny.max_position_embeddings) == (128, 128)
    config = preset_config("llama-7b")
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (4096, 32, 32000)
    assert config.tie_word_embeddings is False
    with pytest.raises(KeyError, match="llama-7b"):
        preset_config("llama-13b")


def test_meta_7b_has_llama_7b_parameter_counts() -> None:
    model = build_meta_model("llama-7b")
    n_tensors, n_params = _param_counts(model)
    assert all(p.is_meta for p in model.parameters())
    # 32 layers x (q, k, v, o, gate, up, down, 2 norms) + embed + final norm + lm_head.
    assert n_tensors == 32 * 9 + 3 == 291
    assert n_params == 6_738_415_616
    assert n_params == pytest.approx(6.7e9, rel=0.01)


def test_meta_70b_and_other_inputs() -> None:
    n_tensors, n_params = _param_counts(build_meta_model("llama-70b"))
    assert n_tensors == 80 * 9 + 3
    assert n_params == pytest.approx(69.0e9, rel=0.01)

    from_shape = build_meta_model(model_presets["tiny"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.is_meta for p in from_shape.parameters())
    from_config = build_meta_model(tiny_llama_config(61))
    assert _param_counts(from_config) == _param_counts(build_tiny_llama(61))
