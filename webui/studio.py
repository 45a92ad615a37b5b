"""What the web UI does, without the UI.

:class:`Studio` loads a bundle's pipelines, checks every request with messages meant for people,
runs generations (streaming previews, stoppable within one sampling step), saves PNGs that keep
their parameters, and writes every generation to the history. ``app.py`` lays this out as Gradio
tabs; keeping the rules here, free of Gradio, keeps them short to read and easy to test.

No model code lives here: everything goes through :mod:`mmgen.pipelines` and :mod:`mmgen.store`
(plus the generic callback-to-iterator helper in :mod:`mmgen.sampling.streaming`).
"""

from __future__ import annotations

import io
import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from mmgen.checks import check_prompt, resolve_seed
from mmgen.pipelines import (
    MAX_CANDIDATES,
    MAX_IMAGES,
    FillMaskPipeline,
    TextGenerationPipeline,
    TextToImagePipeline,
    read_png_metadata,
    save_png,
)
from mmgen.sampling.image import Cancelled
from mmgen.sampling.streaming import stream
from mmgen.store import HistoryStore, Record

DB_NAME = "history.sqlite3"
PREVIEWS_PER_IMAGE = 8  # about this many progressive previews per generation
ATTENTION_SIZE = 256  # heatmaps are drawn at least this many pixels wide


class RequestError(ValueError):
    """A request the UI refuses; the message is shown to the user as it is."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (a shared server must bound its work per click)."""

    max_images: int = min(8, MAX_IMAGES)
    max_prompt_chars: int = 2000
    max_new_tokens: int = 256
    max_fill_top_k: int = 20
    max_temperature: float = 5.0
    max_guidance: float = 30.0
    max_candidates: int = min(8, MAX_CANDIDATES)  # samples per image shown (reranking), each one more image's work
    max_repetition_penalty: float = 2.0
    history_search_depth: int = 200  # search results fetched, then paginated


# ------------------------------------------------------------------------------------------
# Events a generation streams to the UI
# ------------------------------------------------------------------------------------------


@dataclass
class Preview:
    """Partial images while sampling (rows not sampled yet are grey)."""

    done: int
    total: int
    images: list


@dataclass
class ImagesDone:
    """The finished generation: saved PNGs (absolute paths), per-image info, history row."""

    paths: list[Path]
    infos: list[dict]
    record_id: int
    notices: list[str]


@dataclass
class Stopped:
    """The user pressed Stop; nothing was saved."""

    done: int


@dataclass
class TextSoFar:
    text: str  # the continuation generated so far


@dataclass
class TextDone:
    text: str  # the whole continuation
    record_id: int
    stopped: bool
    notices: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# Input checks (each returns the cleaned value or raises RequestError)
# ------------------------------------------------------------------------------------------


def _integral(value: Any, name: str) -> int:
    """Gradio number boxes send floats: 3.0 is 3, 3.5 is an error."""
    if isinstance(value, bool) or value is None:
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise RequestError(f"{name} must be a whole number, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    return value


def _in_range(value: Any, name: str, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise RequestError(f"{name} must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise RequestError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value:g}")
    return float(value)


def form_text(value: Any, limits: Limits, name: str = "prompt", allow_empty: bool = False) -> str:
    """A text box's value through the one prompt check (:func:`mmgen.checks.check_prompt`), with
    this server's length limit; an empty box is Gradio's None."""
    try:
        return check_prompt("" if value is None else value, name, limits.max_prompt_chars, allow_empty)
    except (TypeError, ValueError) as e:
        raise RequestError(str(e)) from None


def form_seed(value: Any) -> int:
    """A seed box's value through the one seed rule (:func:`mmgen.checks.resolve_seed`): the form's
    -1 (or an empty box) asks for a random seed."""
    if value is None or value == "" or value == -1:
        value = None
    try:
        return resolve_seed(value)
    except ValueError as e:
        raise RequestError(f"{e} (-1 picks a random one)") from None


@dataclass(frozen=True)
class ImageRequest:
    """A checked text-to-image request; ``seed`` is the first image's (image i uses seed + i)."""

    prompt: str
    negative_prompt: Optional[str]
    num_images: int
    guidance_scale: float
    temperature: float
    top_k: int  # 0: off
    top_p: float  # 1: off
    seed: int
    candidates: int = 1  # images sampled per image shown, the most likely kept (1: plain sampling)

    def params(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images, "guidance_scale": self.guidance_scale,
            "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "candidates": self.candidates,
        }


@dataclass(frozen=True)
class TextRequest:
    prompt: str
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int

    def params(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_k": self.top_k,
            "top_p": self.top_p, "repetition_penalty": self.repetition_penalty,
        }


# ------------------------------------------------------------------------------------------
# The studio
# ------------------------------------------------------------------------------------------


class Studio:
    """The bundle's pipelines, the history store, and one method per thing the UI does.

    Args:
        bundle: a text-to-image bundle folder; its optional ``gpt/`` and ``bert/`` folders enable
            the text generation and mask filling tabs.
        outputs_dir: where PNGs, the history database and its JSONL manifest go.
        db_path: the SQLite history (default ``outputs_dir/history.sqlite3``).
    """

    def __init__(
        self,
        bundle: str | Path,
        outputs_dir: str | Path,
        db_path: str | Path | None = None,
        limits: Limits = Limits(),
    ) -> None:
        bundle = Path(bundle)
        self.bundle = bundle
        self.limits = limits
        self.t2i = TextToImagePipeline.from_pretrained(bundle)
        self.gpt, self.gpt_missing = self._optional(bundle / "gpt", TextGenerationPipeline)
        self.bert, self.bert_missing = self._optional(bundle / "bert", FillMaskPipeline)
        for pipe in (self.t2i, self.gpt, self.bert):  # the pipelines' own prompt check, at this server's limit
            if pipe is not None:
                pipe.max_prompt_chars = limits.max_prompt_chars
        self.outputs_dir = Path(outputs_dir).resolve()
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = Path(db_path).resolve() if db_path is not None else self.outputs_dir / DB_NAME
        self.store = HistoryStore(self.db_path, self.outputs_dir, embed=self.embed_prompts)
        self._stops: dict[str, set[threading.Event]] = {}  # session -> events of its running generations
        self._stops_lock = threading.Lock()

    @staticmethod
    def _optional(folder: Path, cls):
        """A pipeline from an optional bundle subfolder: (pipeline, None) or (None, why it is absent).

        A folder that exists but does not load is an error at start-up, not a silently missing tab.
        """
        if not folder.is_dir():
            return None, f"this bundle has no `{folder.name}/` model folder ({folder})"
        return cls.from_pretrained(folder), None

    # ---- facts the UI shows -----------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.t2i.model_id

    @property
    def image_size(self) -> tuple[int, int]:
        return self.t2i.image_size

    @property
    def grid_rows(self) -> int:
        """Rows of VQ codes in an image (what image completion counts in)."""
        return self.t2i.image_decoder.config.grid_h

    @property
    def text_length(self) -> int:
        """Prompt tokens the image model reads; the rest of a prompt is cut off."""
        return self.t2i.image_decoder.config.context_len

    def image_defaults(self) -> dict[str, Any]:
        d = self.t2i.defaults
        return {
            "guidance_scale": float(d["guidance_scale"]), "temperature": float(d["temperature"]),
            "top_k": int(d["top_k"] or 0), "top_p": float(d["top_p"] or 1.0),
            "candidates": int(d.get("candidates") or 1),
        }

    def text_model_card(self, name: str) -> str:
        """One line for the ``gpt``/``bert`` tab: the corpus it was trained on, for how long, and
        its held-out figures (``mmgen eval text``), from the bundle's model_index.json."""
        try:
            index = json.loads((self.bundle / "model_index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return ""
        record = (index.get("training") or {}).get(name) or {}
        corpus = ((record.get("experiment") or {}).get("data") or {}).get("path")
        if not corpus:
            return ""
        corpus = Path(corpus).parent.name if Path(corpus).name == "input.txt" else Path(corpus).name
        words = {"shakespeare": "Tiny Shakespeare (40,000 lines of the plays)"}.get(corpus, f"`{corpus}`")
        line = f"Trained on {words}"
        seconds = (record.get("summary") or {}).get("elapsed_s")
        if seconds:
            line += f" for {seconds / 60:.0f} minutes on a CPU"
        figures = (index.get("eval_text") or {}).get(name) or {}
        if "nats_per_char" in figures:
            line += f"; {figures['nats_per_char']:.2f} nats per character on held-out text"
        elif "top1" in figures:
            line += (f"; on held-out text it finds the masked word first {figures['top1']:.0%} of the time, "
                     f"among its five {figures['top5']:.0%}")
        return line + "."

    @property
    def mask_token(self) -> Optional[str]:
        return self.bert.mask_token if self.bert is not None else None

    # ---- stopping ----------------------------------------------------------------------------

    def _new_stop(self, session: Optional[str]) -> threading.Event:
        event = threading.Event()
        if session:
            with self._stops_lock:
                self._stops.setdefault(session, set()).add(event)
        return event

    def _forget_stop(self, session: Optional[str], event: threading.Event) -> None:
        event.set()  # whatever still runs for it stops at its next step
        if session:
            with self._stops_lock:
                events = self._stops.get(session)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._stops[session]

    def stop(self, session: Optional[str]) -> int:
        """Stop every generation this session has running (each ends within one sampling step)."""
        with self._stops_lock:
            events = list(self._stops.get(session or "", ()))
        for event in events:
            event.set()
        return len(events)

    # ---- text to image and image completion ---------------------------------------------------

    def image_request(
        self, prompt, negative_prompt, num_images, guidance_scale, temperature, top_k, top_p, seed, candidates=None
    ) -> ImageRequest:
        lim = self.limits
        # prompts are checked by the pipeline itself (with this server's limit, see __init__)
        prompt = "" if prompt is None else prompt
        negative_prompt = negative_prompt.strip() or None if isinstance(negative_prompt, str) else negative_prompt
        num_images = _integral(num_images, "number of images")
        if not 1 <= num_images <= lim.max_images:
            raise RequestError(f"number of images must be in [1, {lim.max_images}], got {num_images}")
        top_k = _integral(top_k if top_k is not None else 0, "top-k")
        if top_k < 0:
            raise RequestError(f"top-k must be 0 (off) or a positive whole number, got {top_k}")
        # None: the bundle's measured default
        candidates = _integral(candidates if candidates is not None else self.image_defaults()["candidates"],
                               "samples per image")
        if not 1 <= candidates <= lim.max_candidates:
            raise RequestError(f"samples per image must be in [1, {lim.max_candidates}], got {candidates}")
        return ImageRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            num_images=num_images,
            guidance_scale=_in_range(guidance_scale, "guidance scale", 0.0, lim.max_guidance),
            temperature=_in_range(temperature, "temperature", 0.0, lim.max_temperature, low_open=True),
            top_k=top_k,
            top_p=_in_range(top_p if top_p is not None else 1.0, "top-p", 0.0, 1.0, low_open=True),
            seed=form_seed(seed),
            candidates=candidates,
        )

    def truncation_notice(
        self, prompt: str, tokenizer, limit: int, what: str, keep: str = "first", specials: bool = True
    ) -> Optional[str]:
        """A sentence saying how much of ``prompt`` a text model will not read, or None if it all fits.
        (The image model's notices come from its pipeline, computed on the prompt as it reads it.)"""
        ids = tokenizer.encode(prompt, add_special_tokens=specials)
        if len(ids) <= limit:
            return None
        dropped = ids[limit:] if keep == "first" else ids[: len(ids) - limit]
        text = tokenizer.decode(dropped).strip()
        if len(text) > 80:
            text = text[:77] + "..."
        return (
            f"Prompt truncated: it is {len(ids)} tokens and {what} reads the {keep} {limit}; "
            f"ignored: \u201c{text}\u201d"
        )

    def generate_images(
        self,
        req: ImageRequest,
        user: Optional[str] = None,
        session: Optional[str] = None,
        image: Any = None,
        keep_rows: Optional[int] = None,
    ) -> Iterator[Preview | ImagesDone | Stopped]:
        """Sample ``req`` (or complete ``image`` keeping its top ``keep_rows`` rows of codes).

        Yields :class:`Preview` events while sampling, then :class:`ImagesDone` once the PNGs are
        saved and the history row written, or :class:`Stopped` if :meth:`stop` was called (or the
        consumer closed this iterator): then nothing is saved.
        """
        if image is not None:
            keep_rows = _integral(keep_rows, "rows to keep")
            if not 0 <= keep_rows < self.grid_rows:
                raise RequestError(f"rows to keep must be in [0, {self.grid_rows - 1}], got {keep_rows}")
        total = self.t2i.image_decoder.config.num_codes
        every = max(1, total // PREVIEWS_PER_IMAGE)
        stop = self._new_stop(session)
        last_done = [0]

        def run(emit, _cancel):
            def on_preview(done, codes_total, previews):
                last_done[0] = done
                emit(Preview(done, codes_total, previews))

            kwargs = dict(
                negative_prompt=req.negative_prompt, num_images=req.num_images, guidance_scale=req.guidance_scale,
                temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=req.seed, candidates=req.candidates,
                callback=on_preview, callback_every=every, cancel=stop,
            )
            if image is None:
                return self.t2i(req.prompt, **kwargs)
            return self.t2i.complete(_as_pil(image), keep_rows, req.prompt, **kwargs)

        try:
            out = None
            for kind, value in stream(run):
                if kind == "partial":
                    yield value
                else:
                    out = value
        except Cancelled as e:
            yield Stopped(e.step)
            return
        except (ValueError, TypeError) as e:
            raise RequestError(str(e)) from None
        finally:
            self._forget_stop(session, stop)

        images = out.images
        kind = "txt2img" if image is None else "complete"
        params = {**req.params(), "size": list(self.image_size)}
        if image is not None:
            params["keep_rows"] = keep_rows
        paths = [self._save(img, req.seed + i) for i, img in enumerate(images)]
        record_id = self.store.add(
            kind, req.prompt, params, req.seed, self.model_id, files=paths,
            negative_prompt=req.negative_prompt, user=user,
        )
        infos = [
            {"seed": req.seed + i, "file": str(p.relative_to(self.outputs_dir)), "history_id": record_id,
             "parameters": img.info.get("parameters", "")}
            for i, (p, img) in enumerate(zip(paths, images))
        ]
        yield ImagesDone(paths, infos, record_id, out.notices)

    def _save(self, image, seed: int) -> Path:
        """outputs/YYYY-MM-DD/HHMMSS-<random>-<seed>.png, written atomically with its metadata."""
        now = datetime.now(timezone.utc)
        name = f"{now:%H%M%S}-{secrets.token_hex(3)}-{seed}.png"
        return save_png(image, self.outputs_dir / f"{now:%Y-%m-%d}" / name)

    # ---- attention ---------------------------------------------------------------------------

    def image_attention(self, image: Any, prompt: Optional[str] = None) -> list[tuple[Image.Image, str]]:
        """Per prompt token, the image with a heatmap of where the decoder's cross-attention looked
        at that token (averaged over heads and layers). Without ``prompt``, the PNG's own is used."""
        if image is None:
            raise RequestError("choose an image first (select one in the gallery, or upload a PNG)")
        pil = _as_pil(image)
        if not (prompt or "").strip():
            prompt = read_png_metadata(pil).get("prompt") or ""
            if not prompt.strip():
                raise RequestError("this image carries no prompt in its metadata: type the prompt to look at")
        prompt = form_text(prompt, self.limits)
        try:
            tokens, maps = self.t2i.cross_attention_maps(prompt, pil)  # maps (T, gh, gw)
        except ValueError as e:
            raise RequestError(str(e)) from None
        base = _fit_for_display(pil.convert("RGB"), self.image_size)
        return [(heatmap_overlay(base, m.float().numpy()), tok) for tok, m in zip(tokens, maps)]

    # ---- PNG info ------------------------------------------------------------------------------

    def png_info(self, source: Any) -> tuple[str, dict]:
        """(the ``parameters`` text, the parsed parameters) of a PNG; RequestError without them."""
        if source is None:
            raise RequestError("upload a PNG first")
        try:
            pil = _as_pil(source)
        except (OSError, ValueError) as e:
            raise RequestError(f"cannot read this image: {e}") from None
        meta = read_png_metadata(pil)
        if not meta:
            raise RequestError("this image carries no generation parameters (no `parameters` or `mmgen` text chunk)")
        text = (getattr(pil, "text", None) or pil.info).get("parameters", "")
        return text, meta

    # ---- text generation ---------------------------------------------------------------------

    def text_request(self, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed) -> TextRequest:
        if self.gpt is None:
            raise RequestError(f"text generation is not available: {self.gpt_missing}")
        lim = self.limits
        max_new_tokens = _integral(max_new_tokens, "max new tokens")
        room = min(lim.max_new_tokens, self.gpt.model.config.max_len - 1)
        if not 1 <= max_new_tokens <= room:
            raise RequestError(f"max new tokens must be in [1, {room}], got {max_new_tokens}")
        top_k = _integral(top_k if top_k is not None else 0, "top-k")
        if top_k < 0:
            raise RequestError(f"top-k must be 0 (off) or a positive whole number, got {top_k}")
        return TextRequest(
            prompt=form_text(prompt, lim),
            max_new_tokens=max_new_tokens,
            temperature=_in_range(temperature, "temperature", 0.0, lim.max_temperature),
            top_k=top_k,
            top_p=_in_range(top_p if top_p is not None else 1.0, "top-p", 0.0, 1.0, low_open=True),
            repetition_penalty=_in_range(repetition_penalty, "repetition penalty", 1.0, lim.max_repetition_penalty),
            seed=form_seed(seed),
        )

    def generate_text(
        self, req: TextRequest, user: Optional[str] = None, session: Optional[str] = None
    ) -> Iterator[TextSoFar | TextDone]:
        """Stream the continuation token by token, then record it (a stopped run keeps what it has)."""
        room = self.gpt.model.config.max_len - req.max_new_tokens
        notice = self.truncation_notice(req.prompt, self.gpt.tokenizer, room, "the text model", keep="last", specials=False)
        stop = self._new_stop(session)

        def run(emit, _cancel):
            return self.gpt(
                req.prompt, max_new_tokens=req.max_new_tokens, temperature=req.temperature, top_k=req.top_k or None,
                top_p=req.top_p, repetition_penalty=req.repetition_penalty, seed=req.seed, return_full_text=False,
                callback=lambda step, texts: emit(texts[0]), cancel=stop,
            )

        text = ""
        try:
            for kind, value in stream(run):
                if kind == "partial":
                    text = value
                    yield TextSoFar(value)
                else:
                    text = value[0]["generated_text"]
            stopped = stop.is_set()
        except (ValueError, TypeError) as e:
            raise RequestError(str(e)) from None
        finally:
            self._forget_stop(session, stop)
        params = {**req.params(), "model": "gpt"}
        if stopped:
            params["stopped"] = True
        record_id = self.store.add(
            "text", req.prompt, params, req.seed, self.model_id, user=user, output_text=text,
        )
        yield TextDone(text, record_id, stopped, [notice] if notice else [])

    # ---- mask filling ------------------------------------------------------------------------

    def fill_mask(self, text: Any, top_k: Any, user: Optional[str] = None) -> dict[str, Any]:
        """Top-k candidates per mask, attention of each mask over the words, and the history id."""
        if self.bert is None:
            raise RequestError(f"mask filling is not available: {self.bert_missing}")
        text = form_text(text, self.limits, "text")
        top_k = _integral(top_k, "top-k")
        if not 1 <= top_k <= self.limits.max_fill_top_k:
            raise RequestError(f"top-k must be in [1, {self.limits.max_fill_top_k}], got {top_k}")
        if self.bert.mask_token not in text:
            raise RequestError(f"the text has no mask: write {self.bert.mask_token} where a word should be filled in")
        notice = self.truncation_notice(text, self.bert.tokenizer, self.bert.model.config.max_len, "the mask model")
        try:
            result, attention = self.bert(text, top_k=top_k, return_attention=True)
        except ValueError as e:
            raise RequestError(str(e)) from None
        per_mask = [result] if result and isinstance(result[0], dict) else result
        best = per_mask[0][0]["sequence"] if len(per_mask) == 1 else " | ".join(m[0]["token_str"] for m in per_mask)
        record_id = self.store.add(
            "fill_mask", text, {"top_k": top_k, "model": "bert"}, 0, self.model_id, user=user, output_text=best,
        )
        return {
            "masks": per_mask,
            "attention": [attention[pos] for pos in sorted(attention)],
            "record_id": record_id,
            "notices": [notice] if notice else [],
        }

    # ---- history -------------------------------------------------------------------------------

    def embed_prompts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors (N, D) of the text encoder's mean-pooled states: semantic search of prompts."""
        ids, mask, _ = self.t2i.read_prompts(list(texts))  # as the model reads them (rewrite included)
        with torch.inference_mode():
            vectors = self.t2i.text_encoder.embed(ids, mask)  # (N, D)
        return vectors.float().cpu().numpy()

    def history_page(
        self, query: str = "", mode: str = "hybrid", kind: Optional[str] = None, page: Any = 1,
        per_page: int = 12, user: Optional[str] = None,
    ) -> tuple[list[Record], dict[int, tuple[str, ...]], int]:
        """One page of the history (newest first), or of the search results for ``query`` (best first).

        Returns (records, {id: searches that found it}, total).
        """
        page = _integral(page, "page")
        if page < 1:
            raise RequestError(f"page must be 1 or more, got {page}")
        query = form_text(query, self.limits, "search", allow_empty=True)
        if not query.strip():
            records, total = self.store.list(page, per_page, kind=kind, user=user)
            return records, {}, total
        hits = self.store.search(query, limit=self.limits.history_search_depth, mode=mode, kind=kind, user=user)
        start = (page - 1) * per_page
        chosen = hits[start : start + per_page]
        return [h.record for h in chosen], {h.record.id: h.matched_by for h in chosen}, len(hits)

    def record(self, record_id: Any, user: Optional[str] = None) -> Record:
        """A history record the user may see (with auth on, only their own)."""
        if record_id is None or record_id == "":
            raise RequestError("choose a history record first (click a row or an image)")
        try:
            record = self.store.get(_integral(record_id, "history id"))
        except KeyError:
            raise RequestError(f"there is no history record {record_id!r}") from None
        if user is not None and record.user != user:
            raise RequestError(f"history record {record.id} belongs to another user")
        return record

    def files_of(self, record: Record) -> list[Path]:
        return [self.outputs_dir / f for f in record.files if (self.outputs_dir / f).is_file()]

    def rate(self, record_id: Any, rating: int, user: Optional[str] = None) -> Record:
        record = self.record(record_id, user)
        self.store.rate(record.id, rating)
        return self.store.get(record.id)

    def delete(self, record_id: Any, user: Optional[str] = None) -> None:
        self.store.delete(self.record(record_id, user).id)

    def restore(self, record_id: Any, user: Optional[str] = None) -> dict[str, Any]:
        """What regenerates a record: ``{"kind", "model_id", "prompt", "negative_prompt", "seed", "params"}``."""
        return self.store.restore_params(self.record(record_id, user).id)


# ------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------


def _as_pil(source: Any) -> Image.Image:
    """A PIL image from a PIL image, a path or PNG bytes (metadata kept)."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source))
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    return Image.open(Path(source))


def _fit_for_display(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image at the model's size, then enlarged by whole pixels to about ATTENTION_SIZE wide."""
    if image.size != tuple(size):
        image = ImageOps.fit(image, size)
    scale = max(1, ATTENTION_SIZE // max(size))
    return image.resize((size[0] * scale, size[1] * scale), Image.NEAREST)


def heatmap_overlay(image: Image.Image, attention: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """``image`` with ``attention`` (gh, gw), scaled to its own maximum, drawn over it blue -> red."""
    a = np.asarray(attention, dtype=np.float32)
    a = a - a.min()
    a = a / a.max() if a.max() > 0 else a
    heat = Image.fromarray((a * 255).round().astype(np.uint8)).resize(image.size, Image.BILINEAR)
    colored = ImageOps.colorize(heat, black="#1d3fbb", mid="#f3d13a", white="#d7191c")
    return Image.blend(image, colored, alpha)
