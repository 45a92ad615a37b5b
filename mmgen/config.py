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
from typing import Any, Literal, Optional, TypeVar, Union, get_args, get_origin, get_type_hints

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

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], _where: str = "") -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"{_where or cls.__name__}: expected a mapping, got {type(data).__name__}")
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
    # Directional heads at init (bidirectional relative positions only): head 0 starts with bias
    # +rel_direction_init toward keys before the query and -rel_direction_init after it, head 1
    # the reverse, the other heads 0 (T5's init). 0 keeps T5's. A T5 encoder trained from scratch
    # on captions stayed a bag of words (its bias table barely grew), so "a red circle left of a
    # blue square" read as "a blue square left of a red circle"; directional heads tell every word
    # what comes before and after it from the first step.
    rel_direction_init: float = 0.0
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
        if self.rel_direction_init and (self.position != "relative" or self.causal or self.n_heads < 2):
            raise ConfigError("rel_direction_init needs position 'relative', a bidirectional stack (causal false) "
                              f"and at least 2 heads (got position {self.position!r}, causal {self.causal}, "
                              f"{self.n_heads} heads)")
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
    """A T5-style encoder: RMSNorm, no biases, relative-position buckets, unscaled attention."""

    causal: bool = False
    norm: NormKind = "rmsnorm"
    norm_eps: float = 1e-6
    bias: bool = False
    position: PositionKind = "relative"
    attn_scale: Optional[float] = 1.0
    activation: Activation = "geglu_tanh"
    tie_embeddings: bool = False
    # What a decoder reads (TextEncoder.context): the final states, or the states followed by the
    # tokens' own (normalised) input embeddings, (B, 2T, D). Contextual states bind words to one
    # another (which colour goes with which shape); the embeddings stay one word each, so a
    # colour-shape pair never seen in training is still read as its two words.
    context_embeddings: bool = False
    # With context_embeddings: each embedding also carries its token's place in the caption (a
    # learned table of max_len rows), so the decoder can read "the colour before 'left of'" from
    # the words themselves; the states, and so the encoder, are unchanged.
    context_positions: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_positions and not self.context_embeddings:
            raise ConfigError("context_positions needs context_embeddings (the word embeddings it places)")


@dataclass(frozen=True)
class ImageDecoderConfig(TransformerConfig):
    """The causal transformer over VQ codes, conditioned on text-encoder states.

    ``vocab_size`` must be ``codebook_size + 1``: the extra id is the start token, and the model
    predicts codes only. The sequence is the ``grid_h × grid_w`` code grid, in the order
    ``code_order`` says (:func:`mmgen.models.image_decoder.generation_order`).
    """

    codebook_size: int = 512
    grid_h: int = 8
    grid_w: int = 8
    context_dim: int = 256  # width of the text-encoder states
    context_len: int = 32  # longest text (the null context and prefix mode are sized by it)
    conditioning: Literal["cross", "prefix"] = "cross"  # cross-attention, or text states as a prefix
    grid_position: Literal["learned", "rope"] = "learned"  # learned row + column tables, or 2-D RoPE
    caption_dropout: float = 0.1  # probability of training a row on the null context (for guidance)
    # The order codes are generated in: "raster" (row by row), or "coarse": first a sketch, the
    # codes at every coarse_stride-th row and column (offset coarse_stride // 2: on a 9 x 9 grid at
    # stride 3, the centres of a 3 x 3 layout), then the others row by row. Where things go is
    # decided in a few codes that all see one another, before any detail is drawn.
    code_order: Literal["raster", "coarse"] = "raster"
    coarse_stride: int = 3
    # "coarse": the sketch's (row, column) offset within each stride x stride block; unset: the
    # centre (coarse_stride // 2 both ways)
    coarse_offset: Optional[tuple[int, int]] = None
    # "coarse": the training loss weighs each sketch code this many times a detail code (a
    # weighted mean). Where an object goes is learnt from the sketch codes alone: once the sketch
    # is given, the details around it are nearly certain and teach little about positions.
    sketch_loss_weight: float = 1.0
    # How a code is represented, in and out: "table" (a free vector per code, and a free output
    # row) or "pixels" (an MLP of the code's decoded patch, the same vectors for input and output
    # logits): codes that look alike get alike vectors, so a code never seen as a training target
    # can still be drawn (held-out colour-shape pairs need such codes).
    # Or "factors" (mmgen.models.code_factors): the code's source patch as dark colour, light colour
    # and bitmap, one embedding table and one output head per factor, logits summed; codes with the
    # same factors share one canonical code.
    code_embedding: Literal["table", "pixels", "factors"] = "table"
    # "factors": ids available per factor (dark colour, light colour incl. "one colour", bitmap);
    # a VQ needing more is refused when the factors are set
    code_factor_sizes: tuple[int, int, int] = (16, 17, 64)
    code_patch_dim: int = 192  # "pixels": values in a decoded patch (3 x f x f; 3 x 8 x 8 for a x8 VQ)
    # "pixels": also the code's VQ latent (+ code_dim values): tells apart codes whose lone patches
    # are twins (about a third of a shapes VQ's codes), at some cost to generalisation
    code_latent: bool = False
    code_mlp_dim: int = 256  # "pixels": hidden width of the patch MLP
    vocab_size: int = 513
    max_len: int = 64
    position: PositionKind = "none"  # positions come from the grid (learned 2-D or 2-D RoPE)
    cross_attention: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vocab_size != self.codebook_size + 1:
            raise ConfigError(f"vocab_size must be codebook_size + 1 = {self.codebook_size + 1}, got {self.vocab_size}")
        needed = self.grid_h * self.grid_w + (self.context_len if self.conditioning == "prefix" else 0)
        if self.max_len < needed:
            raise ConfigError(f"max_len={self.max_len} is too small for the code grid (+ prefix): needs {needed}")
        if self.cross_attention != (self.conditioning == "cross"):
            raise ConfigError("cross_attention must be true exactly when conditioning is 'cross'")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ConfigError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.code_order == "coarse" and not 2 <= self.coarse_stride <= min(self.grid_h, self.grid_w):
            raise ConfigError(f"coarse_stride must be in [2, {min(self.grid_h, self.grid_w)}] (the grid's shorter side), "
                              f"got {self.coarse_stride}")
        if self.coarse_offset is not None and not all(0 <= o < self.coarse_stride for o in self.coarse_offset):
            raise ConfigError(f"coarse_offset must be two offsets in [0, coarse_stride={self.coarse_stride}), "
                              f"got {self.coarse_offset}")
        if self.sketch_loss_weight <= 0 or (self.sketch_loss_weight != 1.0 and self.code_order != "coarse"):
            raise ConfigError(f"sketch_loss_weight must be > 0, and 1 unless code_order is 'coarse' "
                              f"(got {self.sketch_loss_weight} with code_order {self.code_order!r})")
        if len(self.code_factor_sizes) != 3 or min(self.code_factor_sizes) < 1:
            raise ConfigError(f"code_factor_sizes must be three positive sizes, got {self.code_factor_sizes}")

    @property
    def num_codes(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def bos_id(self) -> int:
        return self.codebook_size


@dataclass(frozen=True)
class TextToImageConfig(Config):
    """The text-to-image model trained as one module: a text encoder and an image decoder."""

    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_decoder: ImageDecoderConfig = field(default_factory=ImageDecoderConfig)
    freeze_text_encoder: bool = False  # e.g. when starting from a pretrained BERT / T5 encoder
    # Word-order loss on the text encoder (training only; batches must carry caption pairs, see
    # mmgen.data.pretokenize.CodesDataset): a caption's mean-pooled states must lie nearer its
    # converse ("b <converse relation> a": the same picture) than its mirror ("a <converse relation>
    # b": the converse's words, the mirrored picture) and the batch's other converses (InfoNCE,
    # temperature 0.1). The image loss alone left the encoder a bag of words: "which object is
    # left" was a coin toss.
    word_order_loss_weight: float = 0.0
    # With text_encoder.context_embeddings: the probability that a training row hides the word
    # embeddings from the decoder, which must then read everything, which object goes where
    # included, from the contextual states. Given both, the decoder reads the embeddings and
    # treats a caption as a bag of words (README, "What limits it").
    context_words_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()  # Config: literal fields hold one of their values
        if not self.word_order_loss_weight >= 0:
            raise ConfigError(f"word_order_loss_weight must be >= 0, got {self.word_order_loss_weight}")
        if not 0.0 <= self.context_words_dropout < 1.0:
            raise ConfigError(f"context_words_dropout must be in [0, 1), got {self.context_words_dropout}")
        if self.context_words_dropout and not self.text_encoder.context_embeddings:
            raise ConfigError("context_words_dropout needs text_encoder.context_embeddings (the word embeddings it hides)")
        if self.text_encoder.context_embeddings and self.image_decoder.conditioning != "cross":
            raise ConfigError("text_encoder.context_embeddings doubles the text context: it needs image_decoder.conditioning 'cross'")
        if self.text_encoder.dim != self.image_decoder.context_dim:
            raise ConfigError(
                f"image_decoder.context_dim ({self.image_decoder.context_dim}) must equal text_encoder.dim ({self.text_encoder.dim})"
            )
