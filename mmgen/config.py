"""Typed, frozen configuration dataclasses.

Every component of mmgen is described by a small frozen dataclass. They all derive from
:class:`Config`, which gives them:

* ``from_dict`` that rejects unknown keys *by name* (a typo in a YAML file is an error, not a
  silently ignored setting) and builds nested configs recursively;
* ``to_dict`` / ``to_json`` / ``from_json`` so a checkpoint folder always carries its config;
* ``replace`` for derived copies.

The model-specific configs live here too so that a config file can be read without importing
any model code.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, TypeVar, Union, get_args, get_origin, get_type_hints

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration is invalid: an unknown key, a wrong type or an out-of-range value."""


def _is_config_type(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Config)


def _unwrap_optional(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON/YAML value to the annotated type (nested configs, tuples, literals)."""
    if value is None:
        return None
    tp = _unwrap_optional(tp)
    if _is_config_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return tp.from_dict(value, _where=where)
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


@functools.lru_cache(maxsize=None)
def _literal_fields(cls: type) -> tuple[tuple[str, tuple], ...]:
    """(name, allowed values) of each field of ``cls`` annotated with a Literal (or an Optional one)."""
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        tp = _unwrap_optional(hints[f.name])
        if get_origin(tp) is Literal:
            out.append((f.name, get_args(tp)))
    return tuple(out)


@dataclass(frozen=True)
class Config:
    """Base class of every mmgen config."""

    def __post_init__(self) -> None:
        # from_dict checks literals as it reads; this catches direct construction and replace()
        for name, allowed in _literal_fields(type(self)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"{type(self).__name__}.{name}: {value!r} is not one of {list(allowed)}")

    # Options that were removed: name -> the value that meant "off". An old config.json that holds
    # one at that value still loads (the key is dropped); any other value is a clear error.
    removed: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], _where: str = "") -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"{_where or cls.__name__}: expected a mapping, got {type(data).__name__}")
        data = _drop_removed(cls, data, _where)
        hints = get_type_hints(cls)
        names = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            prefix = f"{_where}." if _where else ""
            raise ConfigError(
                f"unknown key(s) for {cls.__name__}: {', '.join(prefix + k for k in unknown)}; "
                f"known keys: {', '.join(sorted(names))}"
            )
        kwargs = {}
        for key, value in data.items():
            where = f"{_where}.{key}" if _where else key
            kwargs[key] = _coerce(value, hints[key], where)
        try:
            return cls(**kwargs)
        except TypeError as e:  # a missing required field
            raise ConfigError(f"{_where or cls.__name__}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Config):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = [x.to_dict() if isinstance(x, Config) else x for x in v]
            out[f.name] = v
        return out

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write ``{"_class": name, ...fields}`` atomically."""
        data = {"_class": type(self).__name__, **self.to_dict()}
        atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=False) + "\n")

    @classmethod
    def from_json(cls: type[C], path: str | os.PathLike) -> C:
        path = Path(path)
        data = read_json(path)
        name = data.pop("_class", cls.__name__)
        if name != cls.__name__:
            raise ConfigError(f"{path}: holds a {name}, expected a {cls.__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


REMOVED_IN = "38c4c9a"  # the last commit that still has the removed options (docs/experiments.md)


def _drop_removed(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` without the removed options of ``cls`` that hold their "off" value."""
    kept = dict(data)
    for name, off in cls.removed.items():
        if name not in kept:
            continue
        value = kept.pop(name)
        if value != off:  # JSON gives lists for tuples; every "off" value here is a scalar or None
            key = f"{where}.{name}" if where else name
            raise ConfigError(
                f"{key}={value!r}: this option was removed (it lost its experiment; see docs/experiments.md); "
                f"only {off!r} is still read. mmgen at commit {REMOVED_IN} has it: git checkout {REMOVED_IN}"
            )
    return kept


def read_json(path: str | os.PathLike, error: type[Exception] = ConfigError, hint: str = "") -> dict[str, Any]:
    """Read a JSON object; a missing file, bad JSON or a non-object raises ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------------------
# Transformer configs (shared by GPT, BERT, the text encoder and the image decoder)
# --------------------------------------------------------------------------------------

NormKind = Literal["layernorm", "rmsnorm"]
Activation = Literal["relu", "gelu", "gelu_tanh", "geglu", "geglu_tanh", "swiglu"]
PositionKind = Literal["learned", "sinusoidal", "relative", "rope", "none"]


@dataclass(frozen=True)
class TransformerConfig(Config):
    """The one transformer stack behind every model.

    Field defaults give a small pre-norm GPT-style stack.
    """

    removed = {"rel_direction_init": 0.0}

    vocab_size: int = 1024  # token embedding rows (text tokens or VQ codes + specials)
    max_len: int = 256  # longest sequence (learned positions / caches are sized from this)
    dim: int = 256  # model width
    n_layers: int = 4
    n_heads: int = 8
    head_dim: Optional[int] = None  # defaults to dim // n_heads (T5 decouples them)
    ffn_dim: Optional[int] = None  # defaults to 4 * dim
    activation: Activation = "gelu"
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True  # LayerNorm bias (ignored by RMSNorm)
    pre_norm: bool = True  # GPT-2 / T5: pre-norm; BERT: post-norm
    bias: bool = True  # bias in linear layers (T5 has none)
    position: PositionKind = "learned"
    rel_buckets: int = 32  # T5 relative-position buckets
    rel_max_distance: int = 128
    rope_theta: float = 10000.0
    causal: bool = True
    cross_attention: bool = False
    attn_scale: Optional[float] = None  # None: 1/sqrt(head_dim); T5 uses 1.0
    dropout: float = 0.0
    type_vocab_size: int = 0  # BERT token types (0: none)
    embed_norm: bool = False  # BERT: LayerNorm right after the embeddings
    final_norm: bool = True  # pre-norm stacks end in a norm; post-norm (BERT) does not
    tie_embeddings: bool = True
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()  # Config: literal fields hold one of their values
        for name in ("vocab_size", "max_len", "dim", "n_layers", "n_heads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.head_dim is None and self.dim % self.n_heads:
            raise ConfigError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def d_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

    @property
    def d_ffn(self) -> int:
        return self.ffn_dim if self.ffn_dim is not None else 4 * self.dim


@dataclass(frozen=True)
class GPTConfig(TransformerConfig):
    """A causal language model: GPT-2's layout by default (pre-norm, learned positions, tied head)."""

    activation: Activation = "gelu_tanh"


@dataclass(frozen=True)
class BERTConfig(TransformerConfig):
    """A bidirectional masked language model: BERT's post-norm layout, token types, embedding norm."""

    causal: bool = False
    pre_norm: bool = False
    embed_norm: bool = True
    final_norm: bool = False
    norm_eps: float = 1e-12
    type_vocab_size: int = 2
    max_len: int = 512


@dataclass(frozen=True)
class TextEncoderConfig(TransformerConfig):
    """A T5-style encoder: RMSNorm, no biases, unscaled attention, gated-GELU; rotary positions.

    The defaults are the shipped text-to-image recipe (a 2-layer, width-128 encoder of word
    tokens). A real T5 (``mmgen.models.hf.load_t5_encoder``) sets ``position="relative"``.
    """

    max_len: int = 32
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    causal: bool = False
    norm: NormKind = "rmsnorm"
    norm_eps: float = 1e-6
    bias: bool = False
    position: PositionKind = "rope"
    attn_scale: Optional[float] = 1.0
    activation: Activation = "geglu_tanh"
    tie_embeddings: bool = False
    # What a decoder reads (TextEncoder.context): the final states, or the states followed by the
    # tokens' own (normalised) input embeddings, (B, 2T, D). Contextual states bind words to one
    # another (which colour goes with which shape); the embeddings stay one word each, so a
    # colour-shape pair never seen in training is still read as its two words.
    context_embeddings: bool = True
    # With context_embeddings: each embedding also carries its token's place in the caption (a
    # learned table of max_len rows), so the decoder can read "the colour before 'left of'" from
    # the words themselves; the states, and so the encoder, are unchanged.
    context_positions: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_positions and not self.context_embeddings:
            raise ConfigError("context_positions needs context_embeddings (the word embeddings it places)")


@dataclass(frozen=True)
class ImageDecoderConfig(TransformerConfig):
    """The causal transformer over VQ codes, conditioned on text-encoder states by cross-attention.

    ``vocab_size`` must be ``codebook_size + 1``: the extra id is the start token, and the model
    predicts codes only. The sequence is the ``grid_h × grid_w`` code grid, row by row. The
    defaults are the shipped shapes recipe: a 4-layer, width-128 decoder over the 9 × 9 codes of
    a 768-code VQ (``configs/vq_shapes.yaml``).
    """

    removed = {
        **TransformerConfig.removed,
        "conditioning": "cross", "code_order": "raster", "coarse_stride": 3, "coarse_offset": None,
        "sketch_loss_weight": 1.0, "code_patch_dim": 192, "code_latent": False, "code_mlp_dim": 256,
    }

    codebook_size: int = 768  # the VQ's
    grid_h: int = 9  # code grid rows (image height / the VQ's downsampling)
    grid_w: int = 9
    context_dim: int = 128  # width of the text-encoder states
    context_len: int = 32  # longest text, in tokens (longer prompts are truncated with a notice)
    grid_position: Literal["learned", "rope"] = "learned"  # learned row + column tables, or 2-D RoPE
    caption_dropout: float = 0.1  # probability of training a row on the null context (for guidance)
    # How a code is represented, in and out: "table" (a free vector per code and a free output
    # row), or "factors" (mmgen.models.code_factors): the code's source patch as dark colour,
    # light colour and bitmap, one embedding table and one output head per factor, logits summed;
    # codes with the same factors share one canonical code. Factors let the model draw codes it
    # never saw as targets (held-out colour-shape pairs), but need two-tone patches: for a VQ
    # whose codes are not (photos, garments), training falls back to "table".
    code_embedding: Literal["table", "factors"] = "factors"
    # "factors": ids available per factor (dark colour, light colour incl. "one colour", bitmap);
    # a VQ needing more is refused when the factors are set
    code_factor_sizes: tuple[int, int, int] = (16, 17, 64)
    vocab_size: int = 769
    max_len: int = 81
    dim: int = 128
    n_heads: int = 4
    position: PositionKind = "none"  # positions come from the grid (learned 2-D or 2-D RoPE)
    cross_attention: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vocab_size != self.codebook_size + 1:
            raise ConfigError(f"vocab_size must be codebook_size + 1 = {self.codebook_size + 1}, got {self.vocab_size}")
        if self.max_len < self.num_codes:
            raise ConfigError(f"max_len={self.max_len} is too small for the code grid: needs {self.num_codes}")
        if not self.cross_attention:
            raise ConfigError("the image decoder reads the text by cross-attention: cross_attention must be true")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if len(self.code_factor_sizes) != 3 or min(self.code_factor_sizes) < 1:
            raise ConfigError(f"code_factor_sizes must be three positive sizes, got {self.code_factor_sizes}")

    @property
    def num_codes(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def bos_id(self) -> int:
        return self.codebook_size


# Named sizes of the text-to-image model, as gpt-fast's ``transformer_configs`` and LlamaGen's
# ``GPT_B``/``GPT_L``: (width, layers, heads) of the text encoder and of the image decoder. ``tiny``
# is the dataclass default (the shipped shapes bundle); ``small`` fits richer pictures (emoji,
# garments) on a CPU; ``base`` (~250 M parameters) is for GPUs. A YAML picks one with
# ``model.size: small``; keys it also names win, and the saved config.json holds the values.
T2I_SIZES: dict[str, dict[str, tuple[int, int, int]]] = {
    "tiny": {"text_encoder": (128, 2, 4), "image_decoder": (128, 4, 4)},
    "small": {"text_encoder": (256, 3, 4), "image_decoder": (256, 6, 4)},
    "base": {"text_encoder": (512, 6, 8), "image_decoder": (1024, 14, 16)},
}


def _sized(data: dict[str, Any], size: Any) -> dict[str, Any]:
    """``data`` (a TextToImageConfig mapping) with the named size filled in under its own keys."""
    if not isinstance(size, str) or size not in T2I_SIZES:
        raise ConfigError(f"model.size: {size!r} is not one of {list(T2I_SIZES)}")
    out = dict(data)
    for part, (dim, n_layers, n_heads) in T2I_SIZES[size].items():
        preset = {"dim": dim, "n_layers": n_layers, "n_heads": n_heads}
        if part == "image_decoder":
            preset["context_dim"] = T2I_SIZES[size]["text_encoder"][0]
        given = out.get(part) or {}
        # a section that is not a mapping is left for Config.from_dict to name
        out[part] = {**preset, **given} if isinstance(given, dict) else given
    return out


@dataclass(frozen=True)
class TextToImageConfig(Config):
    """The text-to-image model trained as one module: a text encoder and an image decoder."""

    removed = {"word_order_loss_weight": 0.0, "context_words_dropout": 0.0}

    @classmethod
    def from_dict(cls, data: dict[str, Any], _where: str = "") -> "TextToImageConfig":
        if isinstance(data, dict) and "size" in data:
            data = _sized({k: v for k, v in data.items() if k != "size"}, data["size"])
        return super().from_dict(data, _where)

    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_decoder: ImageDecoderConfig = field(default_factory=ImageDecoderConfig)
    freeze_text_encoder: bool = False  # e.g. when starting from a pretrained BERT / T5 encoder

    def __post_init__(self) -> None:
        super().__post_init__()  # Config: literal fields hold one of their values
        if self.text_encoder.dim != self.image_decoder.context_dim:
            raise ConfigError(
                f"image_decoder.context_dim ({self.image_decoder.context_dim}) must equal text_encoder.dim ({self.text_encoder.dim})"
            )
