"""Image model kinds for the trainer: ``vq`` (the image tokenizer) and ``t2i`` (text-to-image).

``vq`` trains :class:`~mmgen.models.vq.VQModel` on images: the procedural shapes world rendered
on the fly (seeded, endless), or an image-caption folder (emoji scenes). Items are
``{"images": (3, H, W) in [-1, 1]}``, which is what ``VQModel.forward(images)`` takes.

``t2i`` trains :class:`~mmgen.models.text_to_image.TextToImage` on a pretokenized codes folder
(``mmgen data pretokenize``). The caption tokenizer is a small word-level vocabulary trained on
the folder's captions at start-up (the text encoder's vocabulary size follows from it unless
the YAML sets ``model.text_vocab_size``). The export is a complete bundle when ``data.vq`` names
the VQ the codes were made with: ``text_encoder/``, ``image_decoder/``, ``text_tokenizer/``,
``vq/`` and ``model_index.json``, loadable with ``TextToImagePipeline.from_pretrained``.

Listed in :data:`mmgen.training.registry.KINDS`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from mmgen.config import Config, ConfigError, TextEncoderConfig, TextToImageConfig, read_json
from mmgen.models.vq import VQConfig
from mmgen.training.kind import ModelKind, TrainingData

__all__ = ["T2I_KIND", "VQ_KIND", "CodesDataConfig", "ShapesImagesDataConfig", "T2IModelConfig"]


# --------------------------------------------------------------------------------------
# vq: images
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesImagesDataConfig(Config):
    """Images for the VQ: the shapes world rendered on the fly, or an image-caption folder."""

    source: Literal["shapes", "folder"] = "shapes"
    path: Optional[str] = None  # image-caption folder (metadata.jsonl) when source is "folder"
    image_size: Optional[int] = None  # pixels per side; default: the model's image_size
    seed: int = 0  # shapes world seed (validation uses seed + 1)
    length: int = 1_000_000  # virtual length of the shapes stream (one epoch)
    val_length: int = 512  # shapes validation images; for a folder, the last val_length items
    # every k-th shapes image comes from the held-out split (0: never). The tokenizer sees images
    # only, never captions: held-out *compositions* stay unseen by the text-to-image model, but the
    # codebook must hold the patches of e.g. a green circle for that model to be able to draw one.
    heldout_every: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()  # Config: literal fields hold one of their values
        if self.source == "folder" and not self.path:
            raise ConfigError("data.path is required when data.source is 'folder'")
        if self.length <= 0 or self.val_length < 0:
            raise ConfigError("data.length must be positive and data.val_length >= 0")


class _ShapesImages(Dataset):
    """``{"images": tensor}`` items of the shapes world (a pure function of seed and index);
    every ``heldout_every``-th item from the held-out split."""

    def __init__(self, seed: int, length: int, image_size: int, heldout_every: int = 0):
        from mmgen.data.shapes import ShapesDataset

        self.train = ShapesDataset(split="train", seed=seed, length=length, image_size=image_size)
        self.heldout = ShapesDataset(split="heldout", seed=seed, length=length, image_size=image_size)
        self.heldout_every = heldout_every

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from mmgen.data.folder import image_to_tensor

        k = self.heldout_every
        source = self.heldout if k and index % k == k - 1 else self.train
        return {"images": image_to_tensor(source[index]["image"])}


class _FolderImages(Dataset):
    def __init__(self, folder: Dataset, indices: range):
        self.folder, self.indices = folder, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"images": self.folder[self.indices[index]]["image"]}


def _build_vq_data(data_cfg: ShapesImagesDataConfig, model_cfg: VQConfig, seed: int) -> TrainingData:
    size = data_cfg.image_size or model_cfg.image_size
    if size != model_cfg.image_size:
        raise ConfigError(f"data.image_size={size} but model.image_size={model_cfg.image_size}")
    if data_cfg.source == "shapes":
        train = _ShapesImages(data_cfg.seed, data_cfg.length, size, data_cfg.heldout_every)
        val = _ShapesImages(data_cfg.seed + 1, data_cfg.val_length, size, data_cfg.heldout_every) if data_cfg.val_length else None
        info = {"images": f"shapes world, seed {data_cfg.seed}, {size}x{size}"}
    else:
        from mmgen.data.folder import ImageCaptionFolder

        folder = ImageCaptionFolder(data_cfg.path, image_size=size)
        n_val = min(data_cfg.val_length, len(folder) // 10)
        train = _FolderImages(folder, range(0, len(folder) - n_val))
        val = _FolderImages(folder, range(len(folder) - n_val, len(folder))) if n_val else None
        info = {"images": f"{data_cfg.path} ({len(folder)} images, {n_val} for validation)"}
    return TrainingData(train=train, val=val, unit="samples", info=info)


def _build_vq(cfg: VQConfig) -> nn.Module:
    from mmgen.models.vq import VQModel

    return VQModel(cfg)


# --------------------------------------------------------------------------------------
# t2i: pretokenized codes + captions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class T2IModelConfig(TextToImageConfig):
    """The ``model`` section of a t2i experiment: :class:`TextToImageConfig`'s fields, plus the
    text vocabulary size, which the caption tokenizer decides when the YAML leaves it out."""

    text_vocab_size: Optional[int] = None  # overrides text_encoder.vocab_size
    # Start the text encoder from a folder: ours (a TextEncoder or a BERT) or a local Hugging Face
    # BERT / T5. Its architecture and weights replace text_encoder's (whose context_* options
    # stay); name its tokenizer as data.tokenizer_path. With freeze_text_encoder it stays as loaded.
    text_encoder_from: Optional[str] = None

    def model_config(self, pretrained: Optional[TextEncoderConfig] = None) -> TextToImageConfig:
        """The model's config; ``pretrained``: the config of the encoder ``text_encoder_from`` holds."""
        encoder = self.text_encoder
        if pretrained is not None:
            if self.text_vocab_size is not None and self.text_vocab_size > pretrained.vocab_size:
                raise ConfigError(
                    f"the caption tokenizer has {self.text_vocab_size} tokens but the text encoder in "
                    f"{self.text_encoder_from} knows {pretrained.vocab_size}: set data.tokenizer_path to its tokenizer")
            own = {f.name: getattr(encoder, f.name) for f in dataclasses.fields(encoder) if f.name.startswith("context_")}
            encoder = pretrained.replace(**own)  # what the decoder reads is this model's, as _build_t2i loads it
        elif self.text_vocab_size is not None:
            encoder = encoder.replace(vocab_size=self.text_vocab_size)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TextToImageConfig)}
        return TextToImageConfig(**{**fields, "text_encoder": encoder})  # every model field carries over


@dataclass(frozen=True)
class CodesDataConfig(Config):
    """A pretokenized codes folder and how to tokenize its captions."""

    path: str = ""  # codes folder (codes.npy, captions.jsonl, meta.json) from `mmgen data pretokenize`
    vq: Optional[str] = None  # the VQ folder the codes were made with: the export is then a whole bundle
    tokenizer: Literal["word", "char", "wordpiece", "bpe"] = "word"  # caption tokenizer trained on the captions
    tokenizer_path: Optional[str] = None  # or an existing tokenizer (folder or tokenizer.json)
    val_count: int = 1000  # the folder's last val_count items are the validation set
    # "canonical_relations": shapes captions naming "right of" / "below" are trained as their converse
    # (mmgen.data.shapes.canonical_caption), and the exported bundle rewrites prompts the same way
    caption_rewrite: Literal["none", "canonical_relations"] = "none"
    # code_embedding "factors": how many images describe the codes (the patch each code encodes
    # most often). For shapes codes they are drawn as the VQ was trained: pictures of both splits,
    # never captions, so codes of held-out compositions are described too; for a folder, its first.
    code_images: int = 4000

    def __post_init__(self) -> None:
        super().__post_init__()  # Config: literal fields hold one of their values
        if self.code_images <= 0:
            raise ConfigError(f"data.code_images must be positive, got {self.code_images}")
        if not self.path:
            raise ConfigError("data.path is missing: name a codes folder built with `mmgen data pretokenize`")
        if self.val_count < 0:
            raise ConfigError(f"data.val_count must be >= 0, got {self.val_count}")


class BundleExport:
    """What the trainer saves next to an exported t2i model (it calls ``.save(folder)``): the
    caption tokenizer in ``text_tokenizer/`` and, when the VQ is known, ``vq/`` and
    ``model_index.json``, so that the export is a bundle. Sampling defaults are the pipeline's."""

    def __init__(self, tokenizer, vq_dir: Optional[str], source: dict[str, Any], prompt_rewrite: Optional[str] = None):
        self.tokenizer, self.vq_dir, self.source, self.prompt_rewrite = tokenizer, vq_dir, source, prompt_rewrite

    def __getattr__(self, name: str) -> Any:  # behaves as the tokenizer everywhere else
        return getattr(self.tokenizer, name)

    def save(self, folder: str | Path) -> None:
        from mmgen.pipelines import TextToImagePipeline

        folder = Path(folder)
        self.tokenizer.save(folder / "text_tokenizer")
        if self.vq_dir is None:
            return
        from mmgen.models.image_decoder import ImageDecoder
        from mmgen.models.text_encoder import TextEncoder
        from mmgen.models.vq import VQModel

        pipe = TextToImagePipeline(self.tokenizer, TextEncoder.from_pretrained(folder / "text_encoder"),
                                   ImageDecoder.from_pretrained(folder / "image_decoder"),
                                   VQModel.from_pretrained(self.vq_dir), model_id=folder.parent.name)
        pipe.prompt_rewrite = self.prompt_rewrite
        pipe.save_pretrained(folder, extra={"training": {"codes": self.source, "vq": str(self.vq_dir)}})


def _caption_tokenizer(data_cfg: CodesDataConfig, captions: list[str]):
    from mmgen.text import TextTokenizer

    if data_cfg.tokenizer_path:
        return TextTokenizer.from_pretrained(data_cfg.tokenizer_path)
    return TextTokenizer.train(captions, kind=data_cfg.tokenizer)


def _build_t2i_data(data_cfg: CodesDataConfig, model_cfg: T2IModelConfig, seed: int) -> TrainingData:
    from mmgen.data.pretokenize import CodesDataset, collate_codes, read_captions

    folder = Path(data_cfg.path)
    meta = read_json(folder / "meta.json", FileNotFoundError, "; build the codes folder with `mmgen data pretokenize`")
    dec = model_cfg.image_decoder
    if meta["codebook_size"] != dec.codebook_size or meta["grid"] ** 2 != dec.num_codes:
        raise ConfigError(
            f"{folder}: codes of a {meta['codebook_size']}-code VQ on a {meta['grid']}x{meta['grid']} grid, but "
            f"model.image_decoder has codebook_size={dec.codebook_size}, grid {dec.grid_h}x{dec.grid_w}"
        )
    if data_cfg.vq is not None:
        vq_cfg = VQConfig.from_json(Path(data_cfg.vq) / "config.json")
        if vq_cfg.to_dict() != VQConfig.from_dict(meta["vq_config"]).to_dict():
            raise ConfigError(f"data.vq={data_cfg.vq} is not the VQ that made {folder} (their configs differ)")
    rewrite = None
    if data_cfg.caption_rewrite != "none":
        from mmgen.data.shapes import CAPTION_REWRITES

        rewrite = CAPTION_REWRITES[data_cfg.caption_rewrite]
    captions = read_captions(folder)
    if rewrite is not None:
        captions = [rewrite(c) for c in captions]
    tokenizer = _caption_tokenizer(data_cfg, captions)
    if model_cfg.text_vocab_size is not None and model_cfg.text_vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.text_vocab_size={model_cfg.text_vocab_size} is smaller than the caption "
                          f"vocabulary ({tokenizer.vocab_size}); leave it out to use the tokenizer's size")
    codes = CodesDataset(folder, tokenizer, context_len=dec.context_len, captions=captions)
    n_val = min(data_cfg.val_count, len(codes) // 10)
    train = Subset(codes, range(len(codes) - n_val))
    val = Subset(codes, range(len(codes) - n_val, len(codes))) if n_val else None
    export = BundleExport(tokenizer, data_cfg.vq, {"path": str(folder), **meta.get("source", {})},
                          prompt_rewrite=None if rewrite is None else data_cfg.caption_rewrite)
    prepare = _factors_preparer(data_cfg, meta) if dec.code_embedding == "factors" else None
    return TrainingData(
        prepare_model=prepare,
        train=train, val=val, collate_fn=functools.partial(collate_codes, pad_id=tokenizer.pad_id or 0),
        tokenizer=export, unit="samples",
        info={"codes": f"{len(codes):,} images ({n_val} for validation), grid {meta['grid']}x{meta['grid']}",
              "caption vocabulary": tokenizer.vocab_size},
        model_fields={"text_vocab_size": tokenizer.vocab_size},
    )


FIDELITY_IMAGES = 256  # images the canonical merge is checked on
MIN_FIDELITY = 0.9  # below this share of unchanged images, factors would cap what the model can draw


def describe_codes(vq, source: dict[str, Any], n: int) -> dict[str, Any]:
    """:func:`mmgen.models.code_factors.two_tone_factors` of ``vq``'s codes, read off ``n`` images
    of a codes folder's ``source`` (its meta.json entry): shapes pictures drawn as the VQ's training
    images were (both splits, never captions), or the first images of an image folder; plus
    ``fidelity``, :func:`~mmgen.models.code_factors.canonical_fidelity` on the first of them."""
    from mmgen.models.code_factors import canonical_fidelity, source_patches, two_tone_factors

    size = vq.config.image_size
    if source["kind"] == "shapes":
        images = _ShapesImages(source.get("seed", 0), n, size, ShapesImagesDataConfig.heldout_every)
        picture = lambda i: images[i]["images"]  # noqa: E731
        count = len(images)
    else:
        from mmgen.data.folder import ImageCaptionFolder

        folder = ImageCaptionFolder(source["path"], image_size=size)
        picture = lambda i: folder[i]["image"]  # noqa: E731
        count = min(len(folder), n)
    described = two_tone_factors(*source_patches(vq, (picture(i) for i in range(count))))
    described["fidelity"] = canonical_fidelity(vq, [picture(i) for i in range(min(count, FIDELITY_IMAGES))],
                                               described["canonical"])
    return described


def _factors_preparer(data_cfg: CodesDataConfig, meta: dict[str, Any]):
    """``prepare_model`` for code_embedding "factors": describe the VQ's codes by their source patches,
    from the images the codes came from (shapes: drawn as the VQ's were; a folder: its first images)."""
    if data_cfg.vq is None:
        raise ConfigError("model.image_decoder.code_embedding=factors describes codes by the patches the VQ "
                          "encodes: set data.vq")
    source = meta.get("source", {})
    if source.get("kind") not in ("shapes", "folder"):
        raise ConfigError("model.image_decoder.code_embedding=factors needs the images behind the codes; "
                          f"{data_cfg.path}/meta.json names no shapes or folder source (build it with "
                          "`mmgen data pretokenize`)")

    def prepare(model: nn.Module) -> None:
        from mmgen.models.vq import VQModel

        described = describe_codes(VQModel.from_pretrained(data_cfg.vq).eval(), source, data_cfg.code_images)
        if described["fidelity"] < MIN_FIDELITY:
            print(f"warning: merging codes with equal factors changes {1 - described['fidelity']:.0%} of decoded "
                  f"images with this VQ ({data_cfg.vq}); the model cannot draw them exactly. "
                  "model.image_decoder.code_embedding=table keeps every code", file=sys.stderr, flush=True)
        model.image_decoder.set_code_factors(described["factors"], described["canonical"])

    return prepare


def _build_t2i(cfg: T2IModelConfig) -> nn.Module:
    from mmgen.models.text_to_image import TextToImage

    if not cfg.text_encoder_from:
        return TextToImage(cfg.model_config())
    from mmgen.models.hf import load_text_encoder

    encoder = load_text_encoder(cfg.text_encoder_from)
    model = TextToImage(cfg.model_config(encoder.config))
    # the trunk is the folder's; the context's own parts (norm, places) carry over where both have
    # them and start fresh where only the new model has them
    missing, unexpected = model.text_encoder.load_state_dict(encoder.state_dict(), strict=False)
    assert all(k.startswith("context_") for k in missing + unexpected), (missing, unexpected)
    return model


VQ_KIND = ModelKind("vq", VQConfig, ShapesImagesDataConfig, _build_vq, _build_vq_data)
T2I_KIND = ModelKind("t2i", T2IModelConfig, CodesDataConfig, _build_t2i, _build_t2i_data, data_fields=("text_vocab_size",))
