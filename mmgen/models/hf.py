"""Load local Hugging Face GPT-2, BERT and T5 folders into mmgen models through explicit key maps.

Each loader reads the folder's ``config.json`` into one of our configs, renames every tensor by
an explicit table (no fuzzy matching), fuses separate Q/K/V projections into our fused ``qkv``,
transposes GPT-2's Conv1D weights, and loads strictly: a tensor of the folder that the map does
not consume, or a tensor of our model that the folder does not provide, is an error naming it.
Only safetensors weights are read (``pytorch_model.bin`` is a pickle and is refused).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import CheckpointError, load_state_strict, read_safetensors
from ..config import BERTConfig, GPTConfig, TextEncoderConfig, read_json
from .bert import BERT
from .gpt import GPT
from .text_encoder import TextEncoder

_HF_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}


def _read_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = Path(folder)
    hf_config = read_json(folder / "config.json", CheckpointError, "; not a Hugging Face model folder")
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        state = read_safetensors(folder / "model.safetensors")
    elif index.is_file():
        shards = sorted(set(read_json(index, CheckpointError)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(read_safetensors(folder / shard))
    elif (folder / "pytorch_model.bin").is_file():
        raise CheckpointError(
            f"{folder}: only pytorch_model.bin (a pickle) is present; mmgen reads safetensors only. "
            "Re-save it with transformers: model.save_pretrained(dir, safe_serialization=True)"
        )
    else:
        raise CheckpointError(f"{folder}: no model.safetensors found")
    return hf_config, state


def _activation(name: str, where: str) -> str:
    if name not in _HF_ACTIVATIONS:
        raise CheckpointError(f"{where}: unsupported activation {name!r}")
    return _HF_ACTIVATIONS[name]


class _Remapper:
    """Consumes tensors of a foreign state dict by name and records what it produced."""

    def __init__(self, state: dict[str, torch.Tensor], source: str, prefixes: tuple[str, ...] = ("",)):
        self.state, self.source, self.used = state, source, set()
        # the same architecture is saved with or without its base-model prefix ("transformer.", "bert.")
        self.prefix = next((p for p in prefixes if any(k.startswith(p) for k in state)), "")
        self.out: dict[str, torch.Tensor] = {}

    def take(self, name: str) -> torch.Tensor:
        key = self.prefix + name if self.prefix + name in self.state else name
        if key not in self.state:
            raise CheckpointError(f"{self.source}: missing tensor {self.prefix + name}")
        self.used.add(key)
        return self.state[key]

    def has(self, name: str) -> bool:
        return self.prefix + name in self.state or name in self.state

    def put(self, name: str, tensor: torch.Tensor) -> None:
        self.out[name] = tensor

    def finish(self, ignore: Callable[[str], bool] = lambda k: False) -> dict[str, torch.Tensor]:
        extra = sorted(k for k in self.state if k not in self.used and not ignore(k))
        if extra:
            raise CheckpointError(f"{self.source}: unexpected tensors not used by the key map: {', '.join(extra)}")
        return self.out


# ---------------------------------------------------------------------------------------------
# GPT-2 (GPT2LMHeadModel / GPT2Model)
# ---------------------------------------------------------------------------------------------


def gpt2_config(hf: dict) -> GPTConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise CheckpointError(f"GPT-2 option {flag}=True is not supported")
    if not hf.get("scale_attn_weights", True):
        raise CheckpointError("GPT-2 option scale_attn_weights=False is not supported")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        max_len=hf["n_positions"],
        dim=hf["n_embd"],
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        ffn_dim=hf.get("n_inner") or 4 * hf["n_embd"],
        activation=_activation(hf.get("activation_function", "gelu_new"), "GPT-2 config"),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=hf.get("pad_token_id") or 0,
    )


def load_gpt2(folder: str | os.PathLike) -> GPT:
    """A local GPT-2 folder (``save_pretrained`` of GPT2LMHeadModel) as an mmgen GPT."""
    hf, state = _read_folder(folder)
    config = gpt2_config(hf)
    m = _Remapper(state, str(folder), prefixes=("transformer.",))
    m.put("trunk.tok_emb.weight", m.take("wte.weight"))
    m.put("trunk.pos_emb.weight", m.take("wpe.weight"))
    for i in range(config.n_layers):
        src, dst = f"h.{i}.", f"trunk.blocks.{i}."
        # GPT-2's Conv1D stores weights as (in, out): transpose into nn.Linear's (out, in)
        for hf_name, ours, transpose in [
            ("ln_1", "attn_norm", False),
            ("attn.c_attn", "attn.qkv", True),
            ("attn.c_proj", "attn.out", True),
            ("ln_2", "ffn_norm", False),
            ("mlp.c_fc", "ffn.fc_in", True),
            ("mlp.c_proj", "ffn.fc_out", True),
        ]:
            w = m.take(f"{src}{hf_name}.weight")
            m.put(f"{dst}{ours}.weight", w.t().contiguous() if transpose else w)
            m.put(f"{dst}{ours}.bias", m.take(f"{src}{hf_name}.bias"))
    m.put("trunk.final_norm.weight", m.take("ln_f.weight"))
    m.put("trunk.final_norm.bias", m.take("ln_f.bias"))
    if not config.tie_embeddings:
        m.put("lm_head.weight", m.take("lm_head.weight"))
    elif m.has("lm_head.weight"):
        m.take("lm_head.weight")  # the tied copy: same tensor as wte
    out = m.finish(ignore=lambda k: k.endswith((".attn.bias", ".attn.masked_bias")))  # causal-mask buffers
    model = GPT(config)
    load_state_strict(model, out, str(folder))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# BERT (BertForMaskedLM)
# ---------------------------------------------------------------------------------------------


def bert_config(hf: dict) -> BERTConfig:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"BERT position_embedding_type={hf['position_embedding_type']!r} is not supported")
    return BERTConfig(
        vocab_size=hf["vocab_size"],
        max_len=hf["max_position_embeddings"],
        dim=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        ffn_dim=hf["intermediate_size"],
        activation=_activation(hf.get("hidden_act", "gelu"), "BERT config"),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        type_vocab_size=hf.get("type_vocab_size", 2),
        pad_token_id=hf.get("pad_token_id") or 0,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _fuse_qkv(m: _Remapper, names: tuple[str, str, str], dst: str, bias: bool) -> None:
    m.put(f"{dst}.weight", torch.cat([m.take(f"{n}.weight") for n in names], dim=0))
    if bias:
        m.put(f"{dst}.bias", torch.cat([m.take(f"{n}.bias") for n in names], dim=0))


def load_bert(folder: str | os.PathLike) -> BERT:
    """A local BERT folder (``save_pretrained`` of BertForMaskedLM) as an mmgen BERT."""
    hf, state = _read_folder(folder)
    config = bert_config(hf)
    m = _Remapper(state, str(folder), prefixes=("bert.",))

    def linear(src: str, dst: str) -> None:
        m.put(f"{dst}.weight", m.take(f"{src}.weight"))
        m.put(f"{dst}.bias", m.take(f"{src}.bias"))

    m.put("trunk.tok_emb.weight", m.take("embeddings.word_embeddings.weight"))
    m.put("trunk.pos_emb.weight", m.take("embeddings.position_embeddings.weight"))
    m.put("trunk.type_emb.weight", m.take("embeddings.token_type_embeddings.weight"))
    linear("embeddings.LayerNorm", "trunk.embed_norm")
    for i in range(config.n_layers):
        src, dst = f"encoder.layer.{i}.", f"trunk.blocks.{i}."
        _fuse_qkv(m, tuple(f"{src}attention.self.{n}" for n in ("query", "key", "value")), f"{dst}attn.qkv", bias=True)
        linear(f"{src}attention.output.dense", f"{dst}attn.out")
        linear(f"{src}attention.output.LayerNorm", f"{dst}attn_norm")
        linear(f"{src}intermediate.dense", f"{dst}ffn.fc_in")
        linear(f"{src}output.dense", f"{dst}ffn.fc_out")
        linear(f"{src}output.LayerNorm", f"{dst}ffn_norm")
    m.prefix = ""  # the MLM head lives outside the "bert." base model
    linear("cls.predictions.transform.dense", "mlm_dense")
    linear("cls.predictions.transform.LayerNorm", "mlm_norm")
    m.put("mlm_decoder.bias", m.take("cls.predictions.bias"))
    for tied in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
        if m.has(tied):
            m.take(tied)
    if not config.tie_embeddings:
        m.put("mlm_decoder.weight", m.take("cls.predictions.decoder.weight"))
    out = m.finish(ignore=lambda k: k.endswith("embeddings.position_ids"))
    model = BERT(config)
    load_state_strict(model, out, str(folder))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# T5 encoder (T5EncoderModel, or the encoder half of T5ForConditionalGeneration)
# ---------------------------------------------------------------------------------------------


def t5_encoder_config(hf: dict) -> TextEncoderConfig:
    proj = hf.get("feed_forward_proj", "relu")
    # T5 v1.0 is "relu"; v1.1 (and Flan-T5) is "gated-gelu", which transformers runs with gelu_new
    act = {"relu": "relu", "gated-gelu": "geglu_tanh", "gated-silu": "swiglu"}.get(proj)
    if act is None:
        raise CheckpointError(f"T5 feed_forward_proj={proj!r} is not supported (relu, gated-gelu, gated-silu)")
    return TextEncoderConfig(
        vocab_size=hf["vocab_size"],
        max_len=hf.get("n_positions", 512),
        dim=hf["d_model"],
        n_layers=hf["num_layers"],
        n_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        ffn_dim=hf["d_ff"],
        activation=act,
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        rel_buckets=hf.get("relative_attention_num_buckets", 32),
        rel_max_distance=hf.get("relative_attention_max_distance", 128),
        pad_token_id=hf.get("pad_token_id") or 0,
        position="relative",  # T5's bucketed relative-position bias, shared from layer 0
        context_embeddings=False,  # the encoder as T5 has it; the t2i config says what a decoder reads
        context_positions=False,
    )


def load_t5_encoder(folder: str | os.PathLike) -> TextEncoder:
    """The encoder of a local T5 folder (v1.0 relu or v1.1 gated-gelu) as an mmgen TextEncoder."""
    hf, state = _read_folder(folder)
    config = t5_encoder_config(hf)
    m = _Remapper(state, str(folder))
    emb = "encoder.embed_tokens.weight" if m.has("encoder.embed_tokens.weight") else "shared.weight"
    m.put("trunk.tok_emb.weight", m.take(emb))
    if m.has("shared.weight"):
        m.take("shared.weight")  # tied to encoder.embed_tokens
    m.put("trunk.rel_bias.embedding.weight", m.take("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))
    gated = config.activation in ("geglu_tanh", "swiglu")
    for i in range(config.n_layers):
        src, dst = f"encoder.block.{i}.layer.", f"trunk.blocks.{i}."
        _fuse_qkv(m, tuple(f"{src}0.SelfAttention.{n}" for n in "qkv"), f"{dst}attn.qkv", bias=False)
        m.put(f"{dst}attn.out.weight", m.take(f"{src}0.SelfAttention.o.weight"))
        m.put(f"{dst}attn_norm.weight", m.take(f"{src}0.layer_norm.weight"))
        if gated:
            m.put(f"{dst}ffn.fc_gate.weight", m.take(f"{src}1.DenseReluDense.wi_0.weight"))
            m.put(f"{dst}ffn.fc_up.weight", m.take(f"{src}1.DenseReluDense.wi_1.weight"))
        else:
            m.put(f"{dst}ffn.fc_in.weight", m.take(f"{src}1.DenseReluDense.wi.weight"))
        m.put(f"{dst}ffn.fc_out.weight", m.take(f"{src}1.DenseReluDense.wo.weight"))
        m.put(f"{dst}ffn_norm.weight", m.take(f"{src}1.layer_norm.weight"))
    m.put("trunk.final_norm.weight", m.take("encoder.final_layer_norm.weight"))
    # a full T5ForConditionalGeneration folder also holds the decoder and LM head, which we do not use
    out = m.finish(ignore=lambda k: k.startswith("decoder.") or k == "lm_head.weight")
    model = TextEncoder(config)
    load_state_strict(model, out, str(folder))
    return model.eval()


_LOADERS = {"gpt2": load_gpt2, "bert": load_bert, "t5": load_t5_encoder}


def load_hf(folder: str | os.PathLike):
    """Pick the loader from ``model_type`` in the folder's config.json."""
    model_type = read_json(Path(folder) / "config.json", CheckpointError, "; not a Hugging Face model folder").get("model_type")
    if model_type not in _LOADERS:
        raise CheckpointError(f"{folder}: model_type {model_type!r} is not supported (gpt2, bert, t5)")
    return _LOADERS[model_type](folder)


# ---------------------------------------------------------------------------------------------
# A text encoder from any folder
# ---------------------------------------------------------------------------------------------


def text_encoder_from_bert(bert) -> TextEncoder:
    """A TextEncoder with the trunk of a BERT (ours or loaded from a Hugging Face folder).

    The trunk is the same module in both models, so this is a config copy and a state-dict copy;
    the MLM head is dropped.
    """
    # the encoder as it is: what the decoder reads of it (context_*) is the text-to-image config's
    config = TextEncoderConfig.from_dict({**bert.config.to_dict(), "context_embeddings": False, "context_positions": False})
    encoder = TextEncoder(config)
    encoder.trunk.load_state_dict(bert.trunk.state_dict(), strict=True)
    return encoder


def load_text_encoder(folder) -> TextEncoder:
    """A text encoder from a folder: ours (TextEncoder or BERT) or a local HF T5 / BERT folder."""
    config_path = Path(folder) / "config.json"
    data = read_json(config_path, CheckpointError, f" (is {folder} a model folder?)")
    if data.get("model_type") == "t5":
        return load_t5_encoder(folder)
    if data.get("model_type") == "bert":
        return text_encoder_from_bert(load_bert(folder))
    if data.get("_class") == "BERTConfig":
        return text_encoder_from_bert(BERT.from_pretrained(folder))
    if data.get("_class") == "TextEncoderConfig":
        return TextEncoder.from_pretrained(folder)
    raise CheckpointError(f"{config_path}: not a text encoder, BERT or T5 folder")
