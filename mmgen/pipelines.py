"""Pipelines: the user-facing API. Load a folder, call with a prompt, get results.

* :class:`TextGenerationPipeline` (GPT) returns ``[{"generated_text": ...}]`` like transformers'
  ``text-generation`` pipeline.
* :class:`FillMaskPipeline` (BERT) returns ``[{"score", "token", "token_str", "sequence"}]`` like
  transformers' ``fill-mask`` pipeline.

A model folder is ours (``config.json`` with ``_class`` + ``model.safetensors`` +
``tokenizer.json``) or a local Hugging Face GPT-2 / BERT folder.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch
from einops import rearrange

from .checkpoint import CheckpointError
from .checks import MAX_PROMPT_CHARS, MAX_SEED, check_prompt, resolve_seed
from .config import read_json
from .images import fit, image_to_tensor, load_image, tensor_to_images
from .sampling import SamplingParams, generate
from .sampling.streaming import stream
from .text.rewrite import PROMPT_REWRITES
from .text.tokenizer import TextTokenizer

DEMO_BUNDLE = Path(__file__).resolve().parent / "assets" / "demo"  # the bundle shipped with the package


def default_bundle() -> Path:
    """The shipped demo bundle (what ``mmgen webui`` and ``mmgen sample`` use without --bundle)."""
    if not (DEMO_BUNDLE / "model_index.json").is_file():
        raise CheckpointError(
            f"the demo bundle is missing from {DEMO_BUNDLE}; train one with `mmgen train-demo` or pass --bundle DIR"
        )
    return DEMO_BUNDLE


def load_text_model(folder: str | os.PathLike):
    """Our GPT/BERT folder (by the config's ``_class``) or a local HF GPT-2/BERT folder (by ``model_type``)."""
    from .models.bert import BERT
    from .models.gpt import GPT
    from .models.hf import load_hf

    folder = Path(folder)
    config_path = folder / "config.json"
    data = read_json(config_path, CheckpointError, f" (is {folder} a model folder?)")
    if "model_type" in data:
        return load_hf(folder)
    classes = {"GPTConfig": GPT, "BERTConfig": BERT}
    cls = classes.get(data.get("_class"))
    if cls is None:
        raise CheckpointError(f"{config_path}: holds a {data.get('_class')!r}, expected one of {sorted(classes)}")
    return cls.from_pretrained(folder).eval()


def _load_text_pipeline_parts(folder: str | os.PathLike, expected: str, purpose: str):
    """The model (of class ``expected``) and tokenizer of a text model folder."""
    model = load_text_model(folder)
    if type(model).__name__ != expected:
        raise CheckpointError(f"{folder}: holds a {type(model).__name__}, {purpose} needs a {expected}")
    return model, TextTokenizer.from_pretrained(folder)


class TextGenerationPipeline:
    """GPT text generation: ``pipe("To be", max_new_tokens=50, seed=0)``."""

    def __init__(self, model, tokenizer: TextTokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_prompt_chars = MAX_PROMPT_CHARS  # a shared server may lower it

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "TextGenerationPipeline":
        return cls(*_load_text_pipeline_parts(folder, "GPT", "text generation"))

    def _encode_prompt(self, prompt: str, max_new_tokens: int) -> list[int]:
        ids = self.tokenizer.encode(check_prompt(prompt, max_chars=self.max_prompt_chars), add_special_tokens=False)
        if not ids:
            start = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
            if start is None:
                raise ValueError("the prompt is empty and this tokenizer has no start token; type some text")
            ids = [start]
        room = self.model.config.max_len - max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens must be below the model's {self.model.config.max_len} positions")
        if len(ids) > room:
            warnings.warn(f"prompt truncated to its last {room} tokens ({len(ids) - room} dropped) to fit the model")
            ids = ids[-room:]
        return ids

    def __call__(
        self,
        prompt: Union[str, list[str]],
        max_new_tokens: int = 50,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        return_full_text: bool = True,
        callback: Optional[Callable[[int, list[str]], None]] = None,
        cancel: Optional[threading.Event] = None,
    ) -> Union[list[dict], list[list[dict]]]:
        """Generate after each prompt. A list of prompts is batched (left padding); row i uses ``seed + i``.

        ``callback(step, texts_so_far)`` streams the new text of every row after each token.
        """
        SamplingParams(temperature, top_k, top_p, repetition_penalty)  # validate before any work
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompt given")
        encoded = [self._encode_prompt(p, max_new_tokens) for p in prompts]
        T = max(len(e) for e in encoded)
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        ids = torch.full((len(encoded), T), pad, dtype=torch.long)
        mask = torch.zeros(len(encoded), T, dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, T - len(e) :] = torch.tensor(e)
            mask[i, T - len(e) :] = 1
        on_step = None
        if callback is not None:
            on_step = lambda step, toks: callback(step, self.tokenizer.decode_batch(toks.tolist()))  # noqa: E731
        new = generate(
            self.model, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
            eos_token_id=self.tokenizer.eos_id, pad_token_id=pad, attention_mask=mask,
            seed=seed, callback=on_step, cancel=cancel,
        )
        texts = self.tokenizer.decode_batch(new.tolist())
        results = [[{"generated_text": (p + t) if return_full_text else t}] for p, t in zip(prompts, texts)]
        return results[0] if isinstance(prompt, str) else results

    def stream(self, prompt: str, **kwargs) -> Iterator[str]:
        """Yield the generated continuation as it grows (closing the iterator cancels generation)."""

        def run(emit, cancel):
            return self(prompt, callback=lambda step, texts: emit(texts[0]), cancel=cancel, return_full_text=False, **kwargs)

        for kind, value in stream(run):
            if kind == "partial":
                yield value


class FillMaskPipeline:
    """BERT mask filling: ``pipe("the [MASK] sat on the mat", top_k=5)``."""

    def __init__(self, model, tokenizer: TextTokenizer):
        if tokenizer.mask_id is None:
            raise ValueError("this tokenizer has no mask token; fill-mask needs one")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_prompt_chars = MAX_PROMPT_CHARS  # a shared server may lower it

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "FillMaskPipeline":
        return cls(*_load_text_pipeline_parts(folder, "BERT", "mask filling"))

    @property
    def mask_token(self) -> str:
        return self.tokenizer.mask_token

    @torch.inference_mode()
    def __call__(self, text: str, top_k: int = 5, return_attention: bool = False) -> Union[list[dict], list[list[dict]]]:
        """Top-k candidates for each mask token in ``text``.

        One mask: a list of ``{"score", "token", "token_str", "sequence"}``; several masks: one such
        list per mask (as transformers does). With ``return_attention`` the result is a pair
        ``(candidates, attention)`` where attention maps each mask to ``[(token_str, weight), ...]``
        (last layer, averaged over heads).
        """
        check_prompt(text, "text", max_chars=self.max_prompt_chars)
        if not isinstance(top_k, int) or not 1 <= top_k <= 100:
            raise ValueError(f"top_k must be an integer in [1, 100], got {top_k}")
        if self.mask_token not in text:
            raise ValueError(f"the text has no mask token; write {self.mask_token} where a word should be filled in")
        ids = self.tokenizer.encode(text, max_length=self.model.config.max_len)
        positions = [i for i, t in enumerate(ids) if t == self.tokenizer.mask_id]
        if not positions:
            raise ValueError("every mask token was cut off by truncation; shorten the text")
        input_ids = torch.tensor([ids])
        trunk = self.model.trunk
        trunk.set_record_attention(return_attention)
        try:
            logits, _ = self.model(input_ids)
            attention = trunk.blocks[-1].attn.last_weights if return_attention else None
        finally:
            trunk.set_record_attention(False)
        probs = logits[0, positions].float().softmax(-1)  # (M, V)
        scores, tokens = probs.topk(min(top_k, probs.size(-1)), dim=-1)
        results = []
        for m, pos in enumerate(positions):
            rows = []
            for score, token in zip(scores[m].tolist(), tokens[m].tolist()):
                filled = list(ids)
                filled[pos] = token
                rows.append(
                    {
                        "score": score,
                        "token": token,
                        "token_str": self.tokenizer.decode([token], skip_special_tokens=False),
                        # as transformers does: other masks stay visible when there are several
                        "sequence": self.tokenizer.decode(filled, skip_special_tokens=len(positions) == 1),
                    }
                )
            results.append(rows)
        out = results[0] if len(results) == 1 else results
        if not return_attention:
            return out
        token_strs = self.tokenizer.convert_ids_to_tokens(ids)
        weights = attention[0].mean(0)  # (T, T) averaged over heads
        attn = {pos: list(zip(token_strs, weights[pos].tolist())) for pos in positions}
        return out, attn


# =============================================================================================
# Text to image
# =============================================================================================

BUNDLE_INDEX = "model_index.json"
BUNDLE_FORMAT = 1
MAX_IMAGES = 64
DEFAULTS = {"guidance_scale": 1.0, "temperature": 1.0, "top_k": None, "top_p": None, "candidates": 1}
MAX_CANDIDATES = 32
MAX_SAMPLED_ROWS = 512  # images x candidates in one call


def _check_count(value: Any, name: str, most: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise ValueError(f"{name} must be an integer in [1, {most}], got {value!r}")


@dataclass
class TextToImageOutput:
    """What a text-to-image call returns (diffusers' habit: ``pipe(prompt).images``)."""

    images: list  # PIL images; each carries its generation parameters in ``image.info``
    notices: list[str] = field(default_factory=list)  # what the model did not read as written, for people


@dataclass(frozen=True)
class _ImageRequest:
    """One call's checked parameters; ``rows`` holds each image's prompt, ``seed`` the first image's."""

    rows: list[str]
    negative_prompt: Optional[str]
    guidance_scale: float
    temperature: float
    top_k: Optional[int]
    top_p: Optional[float]
    candidates: int
    seed: int
    params: SamplingParams


class TextToImagePipeline:
    """Prompt in, PIL images out: tokenizer → text encoder → image decoder (sampling) → VQ decoder.

    ``pipe = TextToImagePipeline.from_pretrained(bundle_dir)``;
    ``pipe("a small red circle", num_images=4, seed=0).images`` are 4 images; image i uses seed + i
    with its own generator, so it is the same whatever the batch size. Each image carries its
    generation parameters in ``image.info`` (written to PNG text chunks by :func:`save_png`).
    """

    def __init__(self, tokenizer: TextTokenizer, text_encoder, image_decoder, vq, defaults: Optional[dict] = None, model_id: str = "mmgen"):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval()
        self.image_decoder = image_decoder.eval()
        self.vq = vq.eval()
        self.defaults = {**DEFAULTS, **(defaults or {})}
        self.model_id = model_id
        self.extras: dict[str, Any] = {}  # model_index.json content beyond the components
        # a caption rewrite the model was trained with (``data.caption_rewrite``), applied to every prompt
        self.prompt_rewrite: Optional[str] = None
        self.compile = False  # torch.compile the decode steps (pays on GPU; the first call compiles)
        self.max_prompt_chars = MAX_PROMPT_CHARS  # a shared server may lower it

    @property
    def device(self) -> torch.device:
        return next(self.image_decoder.parameters()).device

    def to(self, device: Optional[str | torch.device] = None, dtype: Optional[torch.dtype] = None) -> "TextToImagePipeline":
        """Move every component to ``device`` and cast the transformers to ``dtype`` (e.g. bf16 on a
        GPU; norms and softmaxes still run in fp32). The VQ stays fp32: it is cheap and colours are
        what users see. Returns the pipeline."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        for module in (self.text_encoder, self.image_decoder):
            module.to(device=device, dtype=dtype)
        self.vq.to(device=device)
        return self

    # ---- loading and saving -----------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "TextToImagePipeline":
        from .models.image_decoder import ImageDecoder
        from .models.text_encoder import TextEncoder
        from .models.vq import VQModel

        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"bundle folder not found: {folder}")
        index_path = folder / BUNDLE_INDEX
        index = read_json(index_path, CheckpointError, f"; a bundle holds {BUNDLE_INDEX} and component folders")
        if index.get("format_version", 0) > BUNDLE_FORMAT:
            raise CheckpointError(f"{index_path}: format {index['format_version']} is newer than this mmgen reads ({BUNDLE_FORMAT})")
        pipe = cls(
            TextTokenizer.from_pretrained(folder / "text_tokenizer"),
            TextEncoder.from_pretrained(folder / "text_encoder"),
            ImageDecoder.from_pretrained(folder / "image_decoder"),
            VQModel.from_pretrained(folder / "vq"),
            defaults=index.get("defaults"),
            model_id=index.get("model_id", folder.name),
        )
        pipe.extras = {k: v for k, v in index.items() if k not in ("defaults", "model_id", "components", "prompt_rewrite")}
        rewrite = index.get("prompt_rewrite")
        if rewrite is not None:
            if rewrite not in PROMPT_REWRITES:
                raise CheckpointError(f"{index_path}: unknown prompt_rewrite {rewrite!r}; this mmgen knows "
                                      f"{sorted(PROMPT_REWRITES)}")
            pipe.prompt_rewrite = rewrite
        pipe.folder = folder
        return pipe

    def save_pretrained(self, folder: str | os.PathLike, dtype: Optional[torch.dtype] = None, extra: Optional[dict] = None) -> None:
        """Write the bundle layout (``model_index.json`` last, so a half-written bundle is never valid)."""
        from .config import atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(folder / "text_tokenizer")
        self.text_encoder.save_pretrained(folder / "text_encoder", dtype=dtype)
        self.image_decoder.save_pretrained(folder / "image_decoder", dtype=dtype)
        self.vq.save_pretrained(folder / "vq")
        if dtype is not None:  # the VQ saves itself in fp32; re-save its weights in the bundle dtype
            from .checkpoint import save_weights

            save_weights(self.vq, folder / "vq" / "model.safetensors", dtype=dtype)
        index = {
            "format_version": BUNDLE_FORMAT,
            "model_id": self.model_id,
            "components": {
                "text_tokenizer": "TextTokenizer", "text_encoder": "TextEncoder",
                "image_decoder": "ImageDecoder", "vq": "VQModel",
            },
            "defaults": self.defaults,
            **({"prompt_rewrite": self.prompt_rewrite} if self.prompt_rewrite else {}),
            **self.extras,
            **(extra or {}),
        }
        atomic_write_text(folder / BUNDLE_INDEX, json.dumps(index, indent=2) + "\n")

    # ---- the call ----------------------------------------------------------------------------

    @property
    def image_size(self) -> tuple[int, int]:
        c = self.image_decoder.config
        f = self.vq.config.downsample
        return c.grid_w * f, c.grid_h * f

    def rewrite_prompts(self, prompts: list[str]) -> list[str]:
        """The prompts as the model reads them: unchanged, or through the rewrite the bundle declares
        (:attr:`prompt_rewrite`, a name in :data:`mmgen.text.rewrite.PROMPT_REWRITES`)."""
        if self.prompt_rewrite is None:
            return list(prompts)
        rewrite = PROMPT_REWRITES[self.prompt_rewrite]
        return [rewrite(p) for p in prompts]

    def read_prompts(self, prompts: list[str], what: str = "prompt") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Rewrite and tokenize ``prompts`` once: ids (B, T), mask (B, T), and the notices about what
        the model will not read as written (cut off, or words it does not know), computed on the
        rewritten text, the one the model reads."""
        L = self.image_decoder.config.context_len
        read = self.rewrite_prompts(prompts)
        batch = self.tokenizer.encode_batch(read, max_length=L, padding="longest", return_details=True)
        notices: list[str] = []
        for text, dropped, start, unknown in zip(read, batch["dropped"], batch["dropped_from"], batch["unknown"]):
            found = []
            if dropped:
                ignored = text[start:].strip()
                ignored = ignored if len(ignored) <= 80 else ignored[:77] + "..."
                found.append(f"{what.capitalize()} truncated: the image model reads the first {L} tokens, "
                             f"{dropped} more were dropped; ignored: \u201c{ignored}\u201d")
            if unknown:
                words = ", ".join(f"\u201c{w}\u201d" for w in dict.fromkeys(unknown))
                found.append(f"The image model does not know the word(s) {words} in the {what}: it reads "
                             f"each as {self.tokenizer.unk_token}")
            notices += [n for n in found if n not in notices]
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device), notices

    def _encode(self, prompts: list[str], what: str = "prompt") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Prompts -> the decoder's text context (B, T', D), its mask (B, T') and the notices."""
        ids, mask, notices = self.read_prompts(prompts, what)
        with torch.inference_mode():
            states, _ = self.text_encoder(ids, mask)
            states, mask = self.text_encoder.context(ids, states, mask)
        return states, mask, notices

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> the decoder's text context (B, T', D) and mask (B, T') (:meth:`TextEncoder.context`),
        read as :meth:`read_prompts` does; what is cut off or unknown is reported as a warning."""
        states, mask, notices = self._encode(prompts)
        for notice in notices:
            warnings.warn(notice, stacklevel=2)
        return states, mask

    def _request(self, prompt, negative_prompt, num_images, guidance_scale, temperature, top_k, top_p, seed,
                 candidates) -> "_ImageRequest":
        """Fill unset parameters from the bundle's defaults, check everything once, apply the seed policy."""
        d = self.defaults
        guidance_scale = d["guidance_scale"] if guidance_scale is None else guidance_scale
        temperature = d["temperature"] if temperature is None else temperature
        top_k = d["top_k"] if top_k is None else top_k
        top_p = d["top_p"] if top_p is None else top_p
        candidates = d.get("candidates", 1) if candidates is None else candidates
        prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]  # anything else: check_prompt says
        if not prompts:
            raise ValueError("no prompt given")
        for p in prompts:
            check_prompt(p, max_chars=self.max_prompt_chars, allow_empty=False)
        if negative_prompt is not None:
            check_prompt(negative_prompt, "negative prompt", max_chars=self.max_prompt_chars)
        _check_count(num_images, "num_images", MAX_IMAGES)
        _check_count(candidates, "candidates", MAX_CANDIDATES)
        if len(prompts) * num_images > MAX_IMAGES:
            raise ValueError(f"at most {MAX_IMAGES} images per call, asked for {len(prompts) * num_images}")
        if len(prompts) * num_images * candidates > MAX_SAMPLED_ROWS:
            raise ValueError(f"at most {MAX_SAMPLED_ROWS} images x candidates per call, asked for "
                             f"{len(prompts) * num_images} x {candidates}")
        if not isinstance(guidance_scale, (int, float)) or not 0 <= guidance_scale <= 30:
            raise ValueError(f"guidance_scale must be in [0, 30], got {guidance_scale!r}")
        if temperature == 0:
            raise ValueError("temperature must be > 0 for images (use top_k=1 for greedy decoding)")
        params = SamplingParams(temperature, top_k or None, top_p, 1.0)
        return _ImageRequest(
            rows=[p for p in prompts for _ in range(num_images)], negative_prompt=negative_prompt,
            guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p,
            candidates=candidates, seed=resolve_seed(seed), params=params,
        )

    def __call__(
        self,
        prompt: Union[str, list[str]],
        negative_prompt: Optional[str] = None,
        num_images: int = 1,
        guidance_scale: Optional[float] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        callback: Optional[Callable[[int, int, list], None]] = None,
        callback_every: int = 8,
        cancel: Optional[threading.Event] = None,
        prefix_codes: Optional[torch.Tensor] = None,
        candidates: Optional[int] = None,
    ) -> "TextToImageOutput":
        """Generate ``num_images`` images per prompt. Unset parameters take the bundle's measured defaults;
        ``seed=None`` picks one (each image's ``info`` says which). Returns a :class:`TextToImageOutput`:
        the images and the notices (prompt truncated, words the model does not know).

        ``candidates`` > 1 samples that many images per requested one and keeps the one the model
        finds most likely given the prompt (:meth:`log_likelihood`): DALL-E's reranking, with the
        model itself as the judge instead of CLIP. Candidate 0 of image i uses seed + i, so
        ``candidates=1`` is plain sampling.

        ``callback(codes_done, codes_total, preview_images)`` streams partial images every
        ``callback_every`` codes (unsampled rows are grey); ``cancel`` (threading.Event) stops
        sampling within one step and raises :class:`mmgen.sampling.image.Cancelled`.
        """
        req = self._request(prompt, negative_prompt, num_images, guidance_scale, temperature, top_k, top_p, seed,
                            candidates)
        states, mask, notices = self._encode(req.rows)
        uncond = uncond_mask = None
        if req.negative_prompt and req.guidance_scale != 1.0:
            uncond, uncond_mask, negative_notices = self._encode([req.negative_prompt] * len(req.rows), "negative prompt")
            notices += negative_notices
        for notice in notices:
            if "truncated" in notice:  # diffusers' habit: a cut-off prompt also warns
                warnings.warn(notice, stacklevel=2)
        codes = self._sample(req, states, mask, uncond, uncond_mask, prefix_codes, callback, callback_every, cancel)
        images = self.decode_codes(codes)
        for i, (img, p) in enumerate(zip(images, req.rows)):
            img.info.update(
                image_metadata(
                    prompt=p, negative_prompt=req.negative_prompt, seed=req.seed + i, guidance_scale=req.guidance_scale,
                    temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, size=img.size, model=self.model_id,
                    num_codes=codes.shape[1], **({"candidates": req.candidates} if req.candidates > 1 else {}),
                )
            )
        return TextToImageOutput(images, notices)

    def _sample(self, req: "_ImageRequest", states, mask, uncond, uncond_mask, prefix_codes, callback, callback_every,
                cancel) -> torch.Tensor:
        """Sample every row's codes (n, N); with candidates, each image's most likely candidate."""
        from .sampling.image import sample_image_codes
        from .sampling.processors import make_generators

        n, C = len(req.rows), req.candidates
        # Candidate-major rows: rows [j * n, (j + 1) * n) are candidate j of every image.
        generators = [g for j in range(C) for g in make_generators(req.seed + j * (MAX_SEED + 1), n)]
        expand = (lambda t: t if t is None or C == 1 else t.repeat(C, *([1] * (t.dim() - 1))))  # noqa: E731
        on_codes = None
        if callback is not None:  # previews show candidate 0 of each image
            on_codes = lambda done, codes: callback(done, codes.shape[1], self.decode_codes(codes[:n], preview=True))  # noqa: E731
        codes = sample_image_codes(
            self.image_decoder, expand(states), expand(mask), req.params, req.guidance_scale, expand(uncond),
            expand(uncond_mask), generators=generators, prefix_codes=expand(prefix_codes),
            callback=on_codes, callback_every=callback_every, cancel=cancel, compile=self.compile,
        )
        if C == 1:
            return codes
        scores = self.log_likelihood(expand(states), expand(mask), codes).view(C, n)
        return codes.view(C, n, -1)[scores.argmax(0), torch.arange(n, device=codes.device)]  # (n, N): each image's best

    @torch.inference_mode()
    def log_likelihood(self, states: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """log p(codes | prompt) under the decoder, by teacher forcing: (B,) in nats.

        What ``candidates`` reranks by. The pointwise mutual information with the prompt
        (log p(codes | prompt) - log p(codes | null context)), the model's own implicit
        classifier, was tried first and picks worse images: on the demo bundle it halved exact
        match on seen single objects, favouring grids the unconditional branch finds unlikely.
        """
        # an encoded image may hold codes the factors merge away: score each as its canonical code
        codes_in, targets = self.image_decoder.teacher_forcing(self.image_decoder.canonical_codes(codes))
        logits, _ = self.image_decoder(codes_in, states, mask)
        return logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1).sum(-1)

    def decode_codes(self, codes: torch.Tensor, preview: bool = False) -> list:
        """Codes (B, N) -> PIL images. In a preview, codes of -1 (not sampled yet) show as grey rows."""
        c = self.image_decoder.config
        grid = rearrange(codes, "b (h w) -> b h w", h=c.grid_h).to(next(self.vq.parameters()).device)
        missing = grid < 0
        with torch.inference_mode():
            pixels = self.vq.decode(grid.clamp(min=0))  # (B, 3, H, W) in [-1, 1]
        if preview and missing.any():
            f = self.vq.config.downsample
            hole = missing.repeat_interleave(f, 1).repeat_interleave(f, 2)[:, None]  # (B, 1, H, W)
            pixels = torch.where(hole, torch.zeros_like(pixels), pixels)
        return tensor_to_images(pixels.float().cpu())

    def encode_image(self, image) -> torch.Tensor:
        """A PIL image (or an image file) -> its VQ codes (1, N), after resizing/cropping to the model's size."""
        size = self.image_size
        img = fit(image, size) if hasattr(image, "mode") else load_image(image, size)
        with torch.inference_mode():
            pixels = image_to_tensor(img)[None].to(next(self.vq.parameters()).device)
            return self.vq.encode(pixels).view(1, -1).to(self.device)

    def complete(self, image, keep_rows: int, prompt: str, **kwargs) -> "TextToImageOutput":
        """Keep the top ``keep_rows`` rows of codes of ``image`` and sample the rest from ``prompt``."""
        rows = self.image_decoder.config.grid_h
        if not isinstance(keep_rows, int) or not 0 <= keep_rows < rows:
            raise ValueError(f"keep_rows must be an integer in [0, {rows - 1}], got {keep_rows!r}")
        codes = self.encode_image(image)
        k = keep_rows * self.image_decoder.config.grid_w
        n = kwargs.get("num_images", 1)
        prefix = codes[:, :k].repeat(n * (1 if isinstance(prompt, str) else len(prompt)), 1) if k else None
        out = self(prompt, prefix_codes=prefix, **kwargs)
        for img in out.images:
            img.info["mmgen"] = json.dumps({**json.loads(img.info["mmgen"]), "keep_rows": keep_rows})
        return out

    @torch.inference_mode()
    def cross_attention_maps(self, prompt: str, image) -> tuple[list[str], "torch.Tensor"]:
        """For a generated image: per prompt token, a (grid_h, grid_w) map of how much the decoder's
        cross-attention looked at that token (averaged over heads and layers)."""
        dec = self.image_decoder
        codes = self.encode_image(image) if not torch.is_tensor(image) else image.view(1, -1)
        states, mask = self.encode_prompts([prompt])
        modules = [b.cross_attn for b in dec.trunk.blocks]
        for m in modules:
            m.record_weights = True
        try:
            dec(dec.teacher_forcing(codes)[0], states, mask)
            weights = torch.stack([m.last_weights[0].mean(0) for m in modules]).mean(0)  # (N, T) by grid position
        finally:
            for m in modules:
                m.record_weights, m.last_weights = False, None
        T = int(mask.sum())
        if self.text_encoder.config.context_embeddings:  # a token's state and its own embedding: one token
            T //= 2
            weights = weights[:, :T] + weights[:, T:]
        tokens = self.tokenizer.convert_ids_to_tokens(self.tokenizer.encode_batch(self.rewrite_prompts([prompt]), max_length=dec.config.context_len)["input_ids"][0, :T].tolist())
        maps = rearrange(weights[:, :T], "(h w) t -> t h w", h=dec.config.grid_h)
        return tokens, maps


# =============================================================================================
# PNG metadata: an A1111-style "parameters" line plus a JSON chunk, both read back here
# =============================================================================================


def image_metadata(**params: Any) -> dict[str, str]:
    """The two text chunks for an image: ``parameters`` (A1111 style) and ``mmgen`` (JSON)."""
    p = dict(params)
    lines = [p.get("prompt", "")]
    if p.get("negative_prompt"):
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    size = p.get("size")
    fields = {
        "Steps": p.get("num_codes"),
        "Sampler": "autoregressive",
        "CFG scale": p.get("guidance_scale"),
        "Seed": p.get("seed"),
        "Size": f"{size[0]}x{size[1]}" if size else None,
        "Model": p.get("model"),
        "Temperature": p.get("temperature"),
        "Top-k": p.get("top_k"),
        "Top-p": p.get("top_p"),
        "Candidates": p.get("candidates"),
    }
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None))
    if size is not None:
        p["size"] = list(size)
    return {"parameters": "\n".join(lines), "mmgen": json.dumps(p, sort_keys=True)}


def save_png(image, path: str | os.PathLike, metadata: Optional[dict[str, str]] = None) -> Path:
    """Write ``image`` as a PNG with its metadata text chunks, atomically."""
    import io

    from PIL import PngImagePlugin

    from .config import atomic_write_bytes

    info = PngImagePlugin.PngInfo()
    chunks = metadata if metadata is not None else {k: v for k, v in image.info.items() if k in ("parameters", "mmgen")}
    for key, value in chunks.items():
        info.add_itxt(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_png_metadata(source) -> dict[str, Any]:
    """Generation parameters of a PNG (path, bytes or PIL image): the JSON chunk if present, else
    parsed from the A1111 ``parameters`` text. Returns {} for an image without them."""
    import io

    from PIL import Image

    if isinstance(source, (bytes, bytearray)):
        source = Image.open(io.BytesIO(source))
    elif not hasattr(source, "info"):
        source = Image.open(source)
    info = getattr(source, "text", None) or source.info
    if "mmgen" in info:
        try:
            return json.loads(info["mmgen"])
        except json.JSONDecodeError:
            pass
    if "parameters" in info:
        return parse_parameters(info["parameters"])
    return {}


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse an A1111-style ``parameters`` block back into a dict."""
    lines = text.strip().split("\n")
    out: dict[str, Any] = {}
    settings = lines[-1] if len(lines) > 1 and ": " in lines[-1] else ""
    body = lines[:-1] if settings else lines
    prompt_lines = []
    for line in body:
        if line.startswith("Negative prompt: "):
            out["negative_prompt"] = line[len("Negative prompt: ") :]
        else:
            prompt_lines.append(line)
    out["prompt"] = "\n".join(prompt_lines)
    keys = {"CFG scale": "guidance_scale", "Seed": "seed", "Temperature": "temperature", "Top-k": "top_k", "Top-p": "top_p", "Model": "model", "Steps": "num_codes", "Candidates": "candidates"}
    for part in settings.split(", "):
        if ": " not in part:
            continue
        k, v = part.split(": ", 1)
        if k in keys:
            try:
                out[keys[k]] = int(v) if v.lstrip("-").isdigit() else float(v) if k != "Model" else v
            except ValueError:
                out[keys[k]] = v
        elif k == "Size":
            w, h = v.split("x")
            out["size"] = [int(w), int(h)]
    return out
