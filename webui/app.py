"""``mmgen webui``: the Gradio app over a :class:`~webui.studio.Studio`.

Tabs: text to image (streamed previews, Stop, PNG gallery, seeds, attention per word), image
completion, PNG info, text generation (GPT), mask filling (BERT), history (search, rate, restore,
delete). Every tab is also a named API endpoint for ``gradio_client`` (see ``API_NAMES``).

Safe serving, in one place (:func:`launch`): analytics off; every model event shares one
concurrency group (one worker) behind a bounded queue; uploads are capped by ``max_file_size``;
only the outputs folder is served (and not the history database or manifest inside it);
``--listen``/``--share`` (or any non-loopback ``--host``) refuse to start without auth.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402

from mmgen.checkpoint import CheckpointError  # noqa: E402
from mmgen.store import KINDS, SEARCH_MODES, HistoryStoreError, Record  # noqa: E402

from .studio import ImagesDone, Limits, Preview, RequestError, Stopped, Studio, TextDone  # noqa: E402

MODEL_GROUP = "model"  # the one concurrency group every model event shares
DEFAULT_QUEUE_SIZE = 32
DEFAULT_MAX_FILE_SIZE = "10mb"
PER_PAGE = 12
LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_NAMES = (
    "txt2img", "complete", "stop", "attention", "png_info", "generate_text", "fill_mask",
    "history_search", "history_restore", "history_rate", "history_delete",
)
CSS = """
.pixelated img { image-rendering: pixelated; }
.enlarge img { width: 100%; height: 100%; object-fit: contain; }
footer { display: none !important; }
"""


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input becomes a gr.Error: the browser shows the message, gradio_client raises it."""
    try:
        yield
    except gr.Error:
        raise
    except (RequestError, ValueError, TypeError) as e:
        raise gr.Error(str(e), print_exception=False) from None
    except KeyError as e:
        raise gr.Error(str(e.args[0] if e.args else e), print_exception=False) from None


def _who(request: Optional[gr.Request], auth_on: bool) -> tuple[Optional[str], Optional[str]]:
    """(the logged-in user when auth is on, the browser session)."""
    if request is None:
        return None, None
    user = getattr(request, "username", None) if auth_on else None
    return user, getattr(request, "session_hash", None)


def _status(*lines: str) -> str:
    return "\n\n".join(line for line in lines if line)


def _notices(notices: list[str]) -> str:
    return "\n\n".join(f"⚠️ **{n}**" for n in notices)


def _rating_mark(rating: int) -> str:
    return {1: "👍", -1: "👎"}.get(rating, "")


def _record_row(r: Record, found_by: tuple[str, ...] = ()) -> list:
    output = (r.output_text or "").replace("\n", " ")
    return [
        r.id, r.created_at[:19].replace("T", " "), r.kind, r.user or "", r.prompt, r.seed,
        _rating_mark(r.rating), output[:80], "+".join(found_by),
    ]


HISTORY_HEADERS = ["id", "when (UTC)", "kind", "user", "prompt", "seed", "rating", "output", "found by"]


# ------------------------------------------------------------------------------------------
# The app
# ------------------------------------------------------------------------------------------


@dataclass
class _UI:
    """What every tab builder needs: the studio, whether logins are on, and the shared event settings."""

    s: Studio
    auth_on: bool
    defaults: dict
    model_event: dict  # every model event shares one worker (MODEL_GROUP)
    # plain API endpoints, registered once the tabs are built (gr.Tabs may only hold gr.Tab children)
    endpoints: list[Callable] = field(default_factory=list)

    def who(self, request: Optional[gr.Request]) -> tuple[Optional[str], Optional[str]]:
        return _who(request, self.auth_on)


def build_app(
    bundle: str | Path | None = None,
    outputs: str | Path = "outputs",
    *,
    studio: Optional[Studio] = None,
    auth_on: bool = False,
    limits: Limits = Limits(),
) -> gr.Blocks:
    """The Blocks app for a bundle (or an existing ``studio``). Launch it with :func:`launch`.

    ``auth_on``: history rows record the logged-in user, and each user sees only their own.
    The returned Blocks carries the studio as ``demo.studio``.
    """
    if studio is None:
        if bundle is None:
            from mmgen.pipelines import default_bundle

            bundle = default_bundle()
        studio = Studio(bundle, outputs, limits=limits)
    s = studio
    ui = _UI(s, auth_on, s.image_defaults(), dict(concurrency_id=MODEL_GROUP, concurrency_limit=1))
    width, height = s.image_size
    with gr.Blocks(title="mmgen", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## mmgen · `{s.model_id}`\n"
            f"{width}×{height} images · the image model reads the first {s.text_length} prompt tokens · "
            "every generation is saved as a PNG with its parameters and kept in the History tab"
        )
        with gr.Tabs() as tabs:
            t_form = _txt2img_tab(ui)
            c_form = _complete_tab(ui)
            _png_info_tab(ui, tabs, t_form)
            g_form = _text_tab(ui)
            m_form = _fill_mask_tab(ui)
            _history_tab(ui, demo, tabs, {"txt2img": t_form, "complete": c_form, "text": g_form, "fill_mask": m_form})
        for fn in ui.endpoints:
            gr.api(fn, api_name=fn.__name__)
    demo.studio = s
    demo.auth_on = auth_on
    return demo


def _form_list(form: dict[str, gr.components.Component]) -> list:
    """An image form's inputs in the order the image endpoints take them."""
    return [form[k] for k in ("prompt", "negative_prompt", "num_images", "guidance_scale", "temperature", "top_k",
                              "top_p", "seed", "candidates")]


def _stop_button(ui: _UI, button: gr.Button, event, status: gr.Markdown, message: str) -> None:
    """Wire a Stop button to ``event``.

    The button both cancels the Gradio event (and anything of it still queued) and sets the run's
    stop flag, so sampling ends within one step instead of at the next preview. The message comes
    from a second step: a cancelling event that writes to an output of the event it cancels makes
    the page show "Error" there.
    """

    def stop_quietly(request: gr.Request) -> None:
        ui.s.stop(ui.who(request)[1])

    button.click(stop_quietly, None, None, queue=False, cancels=[event], api_visibility="private").then(
        lambda: message, None, status, queue=False, api_visibility="private"
    )


# ---- text to image -------------------------------------------------------------------------


def _txt2img_tab(ui: _UI) -> list:
    """The Text to image tab (with its attention view and the stop endpoint); returns its form's inputs."""
    s = ui.s
    with gr.Tab("Text to image", id="txt2img"):
        with gr.Row():
            with gr.Column(scale=2):
                t = _image_form("t2i", s, ui.defaults)
                with gr.Row():
                    t_go = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
                    t_stop = gr.Button("Stop", variant="stop", elem_id="t2i-stop")
            with gr.Column(scale=3):
                t_gallery = _gallery("Images", "t2i-gallery")
                t_status = gr.Markdown(elem_id="t2i-status")
                with gr.Row():
                    t_reuse = gr.Button("♻️ Reuse seed of the selected image", size="sm")
                with gr.Accordion("Generation info", open=False):
                    t_info = gr.JSON(show_label=False)
                a_image, a_prompt = _attention_view(ui)
        t_results = gr.State([])  # per-image info of the last generation
        t_selected = gr.State(None)  # index of the image selected in the gallery

    def txt2img(prompt, negative_prompt, num_images, guidance_scale, temperature, top_k, top_p, seed,
                candidates=None, request: gr.Request = None):
        """Generate images; streams previews, then the saved PNGs (file paths keep their metadata)."""
        user, session = ui.who(request)
        with _user_errors():
            req = s.image_request(prompt, negative_prompt, num_images, guidance_scale, temperature, top_k, top_p, seed,
                                  candidates)
            yield from _stream_images(s.generate_images(req, user, session), req.seed)

    t_inputs = _form_list(t)
    t_event = gr.on(
        [t_go.click, t["prompt"].submit], txt2img, t_inputs, [t_gallery, t_status, t_info, t_results],
        api_name="txt2img", **ui.model_event,
    )

    def stop(request: gr.Request) -> str:
        """Stop this session's running generations; each ends within one sampling step."""
        n = s.stop(ui.who(request)[1])
        return f"Stopped {n} running generation(s)." if n else "Nothing was running."

    ui.endpoints.append(stop)
    _stop_button(ui, t_stop, t_event, t_status, "Stopped; the unfinished images were not saved.")

    def select_image(results, evt: gr.SelectData):
        if not results or evt.index is None or evt.index >= len(results):
            return None, gr.skip(), gr.skip()
        return evt.index, str(s.outputs_dir / results[evt.index]["file"]), ""

    t_gallery.select(select_image, t_results, [t_selected, a_image, a_prompt], api_visibility="private")

    def reuse_seed(results, selected):
        if not results:
            raise gr.Error("generate something first, then select an image to reuse its seed")
        return results[selected or 0]["seed"]

    t_reuse.click(reuse_seed, [t_results, t_selected], t["seed"], api_visibility="private")
    return t_inputs


def _attention_view(ui: _UI) -> tuple[gr.Image, gr.Textbox]:
    """The accordion that shows, per prompt word, where the decoder's cross-attention looked."""
    with gr.Accordion("Attention: where each prompt word steered the image", open=False):
        a_image = gr.Image(
            label="Image (select one in the gallery, or upload a PNG)", type="filepath",
            image_mode=None, format="png", sources=["upload"], height=200,
            elem_classes=["pixelated", "enlarge"],
        )
        a_prompt = gr.Textbox(label="Prompt (empty: the one stored in the image)", lines=1)
        a_go = gr.Button("Show attention per word")
        a_gallery = _gallery("Cross-attention per prompt token (red = most)", "attention-gallery", columns=6)

    def attention(image, prompt):
        """Per prompt token, a heatmap over the image of the decoder's cross-attention to it."""
        with _user_errors():
            return ui.s.image_attention(image, prompt)

    a_go.click(attention, [a_image, a_prompt], a_gallery, api_name="attention", **ui.model_event)
    return a_image, a_prompt


# ---- image completion ----------------------------------------------------------------------


def _complete_tab(ui: _UI) -> list:
    """The Image completion tab; returns its form's inputs (the image form, then the rows to keep)."""
    s = ui.s
    with gr.Tab("Image completion", id="complete"):
        with gr.Row():
            with gr.Column(scale=2):
                c_image = gr.Image(
                    label="Start image", type="pil", image_mode="RGB", format="png",
                    sources=["upload", "clipboard"], height=220, elem_classes=["pixelated", "enlarge"],
                )
                c_rows = gr.Slider(
                    0, s.grid_rows - 1, value=s.grid_rows // 2, step=1,
                    label=f"Rows to keep from the top (of {s.grid_rows} rows of codes)",
                )
                c = _image_form("complete", s, ui.defaults)
                with gr.Row():
                    c_go = gr.Button("Complete", variant="primary", elem_id="complete-generate")
                    c_stop = gr.Button("Stop", variant="stop")
            with gr.Column(scale=3):
                c_gallery = _gallery("Completions", "complete-gallery")
                c_status = gr.Markdown()
                with gr.Accordion("Generation info", open=False):
                    c_info = gr.JSON(show_label=False)
        c_results = gr.State([])

    def complete(image, keep_rows, prompt, negative_prompt, num_images, guidance_scale, temperature, top_k,
                 top_p, seed, candidates=None, request: gr.Request = None):
        """Keep the top rows of an image's codes and sample the rest from the prompt."""
        user, session = ui.who(request)
        with _user_errors():
            if image is None:
                raise RequestError("upload a start image first")
            req = s.image_request(prompt, negative_prompt, num_images, guidance_scale, temperature, top_k, top_p, seed,
                                  candidates)
            yield from _stream_images(s.generate_images(req, user, session, image=image, keep_rows=keep_rows), req.seed)

    c_event = c_go.click(complete, [c_image, c_rows, *_form_list(c)], [c_gallery, c_status, c_info, c_results],
                         api_name="complete", **ui.model_event)
    _stop_button(ui, c_stop, c_event, c_status, "Stopped; the unfinished images were not saved.")
    return [*_form_list(c), c_rows]


# ---- PNG info ------------------------------------------------------------------------------


def _png_info_tab(ui: _UI, tabs: gr.Tabs, t_form: list) -> None:
    """The PNG info tab: read a PNG's parameters, and send them to the Text to image form."""
    with gr.Tab("PNG info", id="png_info"):
        with gr.Row():
            with gr.Column():
                p_image = gr.Image(
                    label="A PNG made by mmgen (or AUTOMATIC1111)", type="filepath", image_mode=None,
                    format="png", sources=["upload"], height=260, elem_classes=["pixelated", "enlarge"],
                    elem_id="png-info-image",
                )
            with gr.Column():
                p_text = gr.Textbox(label="parameters", lines=4, interactive=False, elem_id="png-info-text")
                p_json = gr.JSON(label="Parsed parameters")
                p_send = gr.Button("Send to Text to image", elem_id="png-info-send")

    def png_info(image):
        """The generation parameters stored in a PNG: the raw text and the parsed fields."""
        with _user_errors():
            return ui.s.png_info(image)

    p_image.upload(png_info, p_image, [p_text, p_json], api_name="png_info")

    def send_to_txt2img(meta):
        if not meta:
            raise gr.Error("upload a PNG with parameters first")
        return (gr.Tabs(selected="txt2img"), *_image_form_values(meta, meta.get("seed"), num_images=1))

    p_send.click(send_to_txt2img, p_json, [tabs, *t_form], api_visibility="private")


# ---- text generation -----------------------------------------------------------------------

# Prompts in the style of the text models' corpus (Tiny Shakespeare): speaker names, then lines.
TEXT_EXAMPLES = [["ROMEO:\n"], ["First Citizen:\nBefore we proceed any further,"], ["KING HENRY VI:\nO God!"],
                 ["JULIET:\nWherefore art thou"]]
MASK_EXAMPLES = ["to be or not to [MASK].", "the king is [MASK].", "what is your [MASK], my lord?",
                 "I will [MASK] thee to the court.", "good [MASK], sweet prince."]


def _text_tab(ui: _UI) -> list:
    """The Text generation (GPT) tab; returns its form's inputs."""
    s, lim = ui.s, ui.s.limits
    with gr.Tab("Text generation", id="text"):
        if s.gpt is None:
            gr.Markdown(f"⚠️ Text generation is not available: {s.gpt_missing}.")
        else:
            gr.Markdown(s.text_model_card("gpt"), elem_id="text-card")
        with gr.Row():
            with gr.Column(scale=2):
                g_prompt = gr.Textbox(label="Prompt", lines=3, elem_id="text-prompt", placeholder="Once upon a time")
                max_new = min(lim.max_new_tokens, s.gpt.model.config.max_len - 1) if s.gpt else lim.max_new_tokens
                g_max = gr.Slider(1, max_new, value=min(64, max_new), step=1, label="Max new tokens")
                g_temp = gr.Slider(0, lim.max_temperature, value=0.8, step=0.05, label="Temperature (0 = greedy)")
                g_topk = gr.Slider(0, 200, value=40, step=1, label="Top-k (0 = off)")
                g_topp = gr.Slider(0.05, 1, value=0.95, step=0.01, label="Top-p (1 = off)")
                g_rep = gr.Slider(1, lim.max_repetition_penalty, value=1.1, step=0.01, label="Repetition penalty")
                g_seed = _seed_row("text", "Seed (-1 = random)")
                with gr.Row():
                    g_go = gr.Button("Generate", variant="primary", elem_id="text-generate")
                    g_stop = gr.Button("Stop", variant="stop")
            with gr.Column(scale=3):
                g_out = gr.Textbox(label="Text", lines=14, interactive=False, elem_id="text-output")
                g_status = gr.Markdown(elem_id="text-status")
        gr.Examples(TEXT_EXAMPLES, [g_prompt], label="Examples (click one)")

    def generate_text(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                      request: gr.Request):
        """Continue the prompt; streams the text as tokens are generated."""
        user, session = ui.who(request)
        with _user_errors():
            req = s.text_request(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
            for event in s.generate_text(req, user, session):
                if isinstance(event, TextDone):
                    done = "Stopped" if event.stopped else "Done"
                    yield req.prompt + event.text, _status(
                        _notices(event.notices), f"{done}: seed {req.seed} · history #{event.record_id}"
                    )
                else:
                    yield req.prompt + event.text, "Generating…"

    g_inputs = [g_prompt, g_max, g_temp, g_topk, g_topp, g_rep, g_seed]
    g_event = gr.on([g_go.click, g_prompt.submit], generate_text, g_inputs, [g_out, g_status],
                    api_name="generate_text", **ui.model_event)
    _stop_button(ui, g_stop, g_event, g_status, "Stopped; this unfinished text was not saved.")
    return g_inputs


# ---- mask filling --------------------------------------------------------------------------


def _fill_mask_tab(ui: _UI) -> list:
    """The Mask filling (BERT) tab; returns its form's inputs."""
    s = ui.s
    with gr.Tab("Mask filling", id="fill_mask"):
        mask = s.mask_token or "[MASK]"
        if s.bert is None:
            gr.Markdown(f"⚠️ Mask filling is not available: {s.bert_missing}.")
        else:
            gr.Markdown(s.text_model_card("bert"), elem_id="mask-card")
        with gr.Row():
            with gr.Column(scale=2):
                m_text = gr.Textbox(
                    label=f"Text with {mask} where a word is missing", lines=3,
                    value=f"the {mask} sat on the mat", elem_id="mask-text",
                )
                m_topk = gr.Slider(1, s.limits.max_fill_top_k, value=5, step=1, label="Candidates per mask (top-k)")
                m_go = gr.Button("Fill", variant="primary", elem_id="mask-fill")
                m_status = gr.Markdown()
            with gr.Column(scale=3):
                m_label = gr.Label(label="First mask: candidates, with a bar for each probability", elem_id="mask-label")
                m_table = gr.Dataframe(
                    headers=["mask", "rank", "token", "score", "sequence"], label="All candidates",
                    interactive=False, wrap=True,
                )
                m_attention = gr.HighlightedText(
                    label="What the first mask attended to (last layer, averaged over heads)",
                    show_legend=False, combine_adjacent=False,
                )
        gr.Examples([[t.replace("[MASK]", mask)] for t in MASK_EXAMPLES], [m_text], label="Examples (click one)")

    def fill_mask(text, top_k, request: gr.Request):
        """Top-k candidates for each mask (HF fill-mask shape), and what the first mask attended to."""
        user, _ = ui.who(request)
        with _user_errors():
            out = s.fill_mask(text, top_k, user)
        masks = out["masks"]
        label = {c["token_str"]: c["score"] for c in masks[0]}
        table = [[m + 1, r + 1, c["token_str"], round(c["score"], 4), c["sequence"]]
                 for m, cands in enumerate(masks) for r, c in enumerate(cands)]
        weights = out["attention"][0]
        top = max((w for _, w in weights), default=0) or 1.0
        highlighted = [(f"{tok} ", round(w / top, 3)) for tok, w in weights]
        status = _status(_notices(out["notices"]), f"history #{out['record_id']}")
        return label, table, highlighted, status

    gr.on([m_go.click, m_text.submit], fill_mask, [m_text, m_topk], [m_label, m_table, m_attention, m_status],
          api_name="fill_mask", **ui.model_event)
    return [m_text, m_topk]


# ---- history -------------------------------------------------------------------------------


def _history_tab(ui: _UI, demo: gr.Blocks, tabs: gr.Tabs, forms: dict[str, list]) -> None:
    """The History tab: search and page, pick a record, rate, delete, restore into its tab's form."""
    with gr.Tab("History", id="history"):
        with gr.Row():
            h_query = gr.Textbox(label="Search prompts and outputs (empty: everything, newest first)", scale=4,
                                 elem_id="history-query")
            h_mode = gr.Radio(list(SEARCH_MODES), value="hybrid", label="Search", scale=2)
            h_kind = gr.Dropdown(["all", *KINDS], value="all", label="Kind", scale=1)
            h_go = gr.Button("Search", variant="primary", scale=1, elem_id="history-search")
        with gr.Row():
            h_prev = gr.Button("◀ Newer", size="sm")
            h_page = gr.Number(value=1, precision=0, minimum=1, label="Page", scale=0, min_width=90)
            h_next = gr.Button("Older ▶", size="sm")
            h_info = gr.Markdown()
        h_gallery = _gallery("Images on this page", "history-gallery", columns=6)
        h_table = gr.Dataframe(
            headers=HISTORY_HEADERS, label="Records", interactive=False, wrap=True, elem_id="history-table",
            column_widths=["5%", "14%", "8%", "7%", "26%", "11%", "6%", "15%", "8%"],
        )
        with gr.Row():
            h_id = gr.Number(label="Record id (click a row or an image)", precision=0, scale=1, elem_id="history-id")
            h_up = gr.Button("👍", size="sm")
            h_down = gr.Button("👎", size="sm")
            h_restore = gr.Button("Restore parameters", size="sm", elem_id="history-restore")
            h_delete = gr.Button("🗑️ Delete record and files", size="sm", variant="stop")
        h_detail = gr.JSON(label="Record", open=False)
        h_gallery_ids = gr.State([])  # record id of each gallery image
        h_table_ids = gr.State([])  # record id of each table row

    search_event = _history_search_events(ui, demo, h_query, h_mode, h_kind, h_page, h_go, h_prev, h_next,
                                          [h_gallery, h_table, h_info, h_gallery_ids, h_table_ids])
    _history_pick_events(ui, h_table, h_table_ids, h_gallery, h_gallery_ids, h_id, h_detail)
    _history_edit_events(ui, search_event, h_id, h_detail, h_info, h_up, h_down, h_delete)
    _history_restore_event(ui, tabs, forms, h_restore, h_id, h_detail)


def _history_search_events(ui: _UI, demo, h_query, h_mode, h_kind, h_page, h_go, h_prev, h_next, outputs) -> dict:
    """Search, submit, paging and page load; returns the search event's settings for reuse."""
    s = ui.s

    def history_search(query, mode, kind, page, request: gr.Request):
        """A page of the history, or of the hybrid (keyword + semantic) search results."""
        user, _ = ui.who(request)
        with _user_errors():
            records, found_by, total = s.history_page(
                query or "", mode or "hybrid", None if kind in (None, "", "all") else kind, page or 1, PER_PAGE, user,
            )
        gallery, gallery_ids = [], []
        for r in records:
            for i, path in enumerate(s.files_of(r)):
                gallery.append((str(path), f"#{r.id} · seed {r.seed + i} · {r.prompt[:40]}"))
                gallery_ids.append(r.id)
        pages = max(1, -(-total // PER_PAGE))
        what = f"{total} result(s) for “{query}”" if (query or "").strip() else f"{total} record(s)"
        rows = [_record_row(r, found_by.get(r.id, ())) for r in records]
        return gallery, rows, f"{what} · page {int(page or 1)} of {pages}", gallery_ids, [r.id for r in records]

    search_event = dict(fn=history_search, inputs=[h_query, h_mode, h_kind, h_page], outputs=outputs, **ui.model_event)
    h_go.click(lambda: 1, None, h_page, queue=False, api_visibility="private").then(
        **search_event, api_name="history_search"
    )
    h_query.submit(lambda: 1, None, h_page, queue=False, api_visibility="private").then(
        **search_event, api_visibility="private"
    )
    h_prev.click(lambda p: max(1, int(p or 1) - 1), h_page, h_page, queue=False, api_visibility="private").then(
        **search_event, api_visibility="private"
    )
    h_next.click(lambda p: int(p or 1) + 1, h_page, h_page, queue=False, api_visibility="private").then(
        **search_event, api_visibility="private"
    )
    demo.load(**search_event, api_visibility="private")
    return search_event


def _history_pick_events(ui: _UI, h_table, h_table_ids, h_gallery, h_gallery_ids, h_id, h_detail) -> None:
    """Clicking a row or an image picks its record; the record is shown."""

    def pick_row(ids, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return ids[row] if ids and row is not None and row < len(ids) else gr.skip()

    def pick_image(ids, evt: gr.SelectData):
        return ids[evt.index] if ids and evt.index is not None and evt.index < len(ids) else gr.skip()

    h_table.select(pick_row, h_table_ids, h_id, api_visibility="private")
    h_gallery.select(pick_image, h_gallery_ids, h_id, api_visibility="private")

    def show_record(record_id, request: gr.Request):
        if record_id is None:
            return None
        try:
            return ui.s.record(record_id, ui.who(request)[0]).to_dict()
        except RequestError:
            return None

    h_id.change(show_record, h_id, h_detail, api_visibility="private")


def _history_edit_events(ui: _UI, search_event: dict, h_id, h_detail, h_info, h_up, h_down, h_delete) -> None:
    """Rating (thumbs and the history_rate endpoint) and deleting a record; both refresh the page."""
    s = ui.s

    def history_rate(record_id: int, rating: int, request: gr.Request) -> dict:
        """Rate a history record: 1 (good), -1 (bad) or 0 (unrated). Returns the record."""
        user, _ = ui.who(request)
        with _user_errors():
            return s.rate(record_id, rating, user).to_dict()

    ui.endpoints.append(history_rate)

    def thumbs_up(record_id, request: gr.Request):
        return history_rate(record_id, 1, request)

    def thumbs_down(record_id, request: gr.Request):
        return history_rate(record_id, -1, request)

    for button, fn in ((h_up, thumbs_up), (h_down, thumbs_down)):
        button.click(fn, h_id, h_detail, api_visibility="private").then(**search_event, api_visibility="private")

    def history_delete(record_id, request: gr.Request):
        """Delete a history record and its image files."""
        user, _ = ui.who(request)
        with _user_errors():
            if record_id is None:
                raise RequestError("choose a record first (click a row or an image)")
            s.delete(record_id, user)
        return None, f"Deleted record #{int(record_id)}."

    h_delete.click(history_delete, h_id, [h_id, h_info], api_name="history_delete").then(
        **search_event, api_visibility="private"
    )


def _history_restore_event(ui: _UI, tabs: gr.Tabs, forms: dict[str, list], h_restore, h_id, h_detail) -> None:
    """Restore: the record's stored parameters, filled into its own tab's form (the others stay)."""
    kinds = list(forms)  # txt2img, complete, text, fill_mask: the output order

    def history_restore(record_id, request: gr.Request):
        """The stored parameters of a record (first output), also filled into its tab's form."""
        user, _ = ui.who(request)
        with _user_errors():
            if record_id is None:
                raise RequestError("choose a record first (click a row or an image)")
            restored = ui.s.restore(record_id, user)
        values = {k: [gr.skip()] * len(forms[k]) for k in kinds}
        values[restored["kind"]] = _restored_values(restored)
        return (restored, gr.Tabs(selected=restored["kind"]), *[v for k in kinds for v in values[k]])

    h_restore.click(history_restore, h_id, [h_detail, tabs, *[c for k in kinds for c in forms[k]]],
                    api_name="history_restore")


def _restored_values(restored: dict) -> list:
    """A history record's parameters as the values of its tab's form."""
    p, kind = restored["params"], restored["kind"]
    if kind in ("txt2img", "complete"):
        values = _image_form_values({**p, **restored}, restored["seed"], p.get("num_images", 1))
        return values if kind == "txt2img" else [*values, p.get("keep_rows", gr.skip())]
    if kind == "text":
        return [restored["prompt"], p.get("max_new_tokens"), p.get("temperature"), p.get("top_k", 0),
                p.get("top_p", 1.0), p.get("repetition_penalty", 1.0), restored["seed"]]
    return [restored["prompt"], p.get("top_k", 5)]  # fill_mask


def _image_form(prefix: str, s: Studio, defaults: dict) -> dict[str, gr.components.Component]:
    """Prompt, negative prompt and sampling controls of an image tab."""
    lim = s.limits
    form = {
        "prompt": gr.Textbox(label="Prompt", lines=2, elem_id=f"{prefix}-prompt", placeholder="a small red circle"),
        "negative_prompt": gr.Textbox(label="Negative prompt (used when guidance ≠ 1)", lines=1),
    }
    with gr.Row():
        form["num_images"] = gr.Slider(1, lim.max_images, value=min(4, lim.max_images), step=1, label="Images")
        form["guidance_scale"] = gr.Slider(0, lim.max_guidance, value=defaults["guidance_scale"], step=0.1,
                                           label="Guidance scale (1 = off)")
    with gr.Row():
        form["temperature"] = gr.Slider(0.05, lim.max_temperature, value=defaults["temperature"], step=0.05,
                                        label="Temperature")
        form["top_k"] = gr.Slider(0, s.t2i.image_decoder.config.codebook_size, value=defaults["top_k"], step=1,
                                  label="Top-k (0 = off)")
        form["top_p"] = gr.Slider(0.05, 1, value=defaults["top_p"], step=0.01, label="Top-p (1 = off)")
        form["candidates"] = gr.Slider(1, lim.max_candidates, value=min(defaults["candidates"], lim.max_candidates),
                                       step=1, label="Samples per image (the most likely is kept)")
    form["seed"] = _seed_row(prefix)
    return form


def _seed_row(prefix: str, label: str = "Seed (-1 = random; image i uses seed + i)") -> gr.Number:
    with gr.Row(equal_height=True):
        seed = gr.Number(value=-1, precision=0, label=label, elem_id=f"{prefix}-seed", scale=4)
        dice = gr.Button("🎲", size="sm", scale=0, min_width=50)
    dice.click(lambda: -1, None, seed, queue=False, api_visibility="private")
    return seed


def _gallery(label: str, elem_id: str, columns: int = 4) -> gr.Gallery:
    # PNG, not Gradio's default WEBP: pixels stay exact and the parameters text chunks survive.
    return gr.Gallery(
        label=label, format="png", columns=columns, object_fit="contain", height="auto", elem_id=elem_id,
        elem_classes=["pixelated", "enlarge"], buttons=["download", "download_all", "fullscreen"], interactive=False,
    )


def _image_form_values(meta: dict, seed: Any, num_images: int) -> list:
    """Values for [prompt, negative, images, guidance, temperature, top-k, top-p, seed, samples per image]
    from parameters (a PNG without a candidates field was sampled plainly: 1)."""
    return [
        meta.get("prompt", ""), meta.get("negative_prompt") or "", num_images,
        meta.get("guidance_scale", gr.skip()), meta.get("temperature", gr.skip()),
        meta.get("top_k") or 0, meta.get("top_p") or 1.0, seed if seed is not None else -1,
        meta.get("candidates") or 1,
    ]


def _stream_images(events, seed: int):
    """Studio image events -> (gallery, status, info, results) frames for Gradio."""
    for event in events:
        if isinstance(event, Preview):
            gallery = [(img, f"seed {seed + i}") for i, img in enumerate(event.images)]
            yield gallery, f"Sampling… {event.done}/{event.total} codes", gr.skip(), gr.skip()
        elif isinstance(event, Stopped):
            yield gr.skip(), f"Stopped after {event.done} codes; nothing was saved.", gr.skip(), gr.skip()
        elif isinstance(event, ImagesDone):
            gallery = [(str(p), f"seed {info['seed']}") for p, info in zip(event.paths, event.infos)]
            status = _status(
                _notices(event.notices),
                f"Saved {len(event.paths)} PNG(s) · seeds {seed}–{seed + len(event.paths) - 1} · history #{event.record_id}",
            )
            yield gallery, status, event.infos, event.infos


# ------------------------------------------------------------------------------------------
# Serving
# ------------------------------------------------------------------------------------------


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: Optional[int] = 7860,
    auth: Optional[list[tuple[str, str]]] = None,
    share: bool = False,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Queue and launch ``demo`` with the safe-serving settings; returns Gradio's (app, url, share_url).

    Refuses a non-loopback host or a share link without auth. Only the outputs folder is served,
    minus the history database and manifest that live in it.
    """
    if (share or host not in LOOPBACK) and not auth:
        raise ValueError(
            f"refusing to serve on {'a public share link' if share else host} without a login: "
            "pass --auth USER:PASS or --auth-file FILE"
        )
    s: Studio = demo.studio
    private = [s.db_path, Path(f"{s.db_path}-wal"), Path(f"{s.db_path}-shm"), Path(f"{s.db_path}-journal")]
    if s.store.manifest_path is not None:
        private.append(s.store.manifest_path)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    return demo.launch(
        server_name=host, server_port=port, auth=auth or None, share=share,
        allowed_paths=[str(s.outputs_dir)], blocked_paths=[str(p) for p in private],
        max_file_size=max_file_size, prevent_thread_lock=prevent_thread_lock, quiet=quiet,
        show_error=True, css=CSS, footer_links=["api"],
        auth_message="mmgen: log in to generate" if auth else None,
    )


def read_auth(spec: Optional[str], file: Optional[str]) -> Optional[list[tuple[str, str]]]:
    """``USER:PASS`` and/or a file with one ``USER:PASS`` per line (``#`` comments) -> pairs."""
    pairs: list[tuple[str, str]] = []
    sources = [("--auth", spec)] if spec else []
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"cannot read --auth-file {file}: {e.strerror}") from None
        sources += [(f"{file} line {n}", line.strip()) for n, line in enumerate(text.splitlines(), 1)
                    if line.strip() and not line.strip().startswith("#")]
    for where, item in sources:
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{where}: expected USER:PASS")
        pairs.append((user, password))
    if file and not pairs:
        raise ValueError(f"--auth-file {file} holds no USER:PASS line")
    return pairs or None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmgen webui",
        description="Start the web UI: text to image, image completion, PNG info, text generation, "
        "mask filling and a searchable history. Analytics are off.",
    )
    p.add_argument("--bundle", default=None, help="bundle folder (default: the shipped demo bundle)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", metavar="USER:PASS", default=None, help="require this login")
    p.add_argument("--auth-file", metavar="FILE", default=None, help="file of USER:PASS lines, one login each")
    p.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 (every network interface); needs auth")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link; needs auth")
    p.add_argument("--outputs", default="outputs", help="folder for PNGs and the history (default ./outputs)")
    p.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="requests waiting at most (default 32)")
    p.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help="largest upload (default 10mb)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    host = "0.0.0.0" if args.listen else args.host
    try:
        auth = read_auth(args.auth, args.auth_file)
        if (args.share or host not in LOOPBACK) and not auth:
            raise ValueError(
                f"{'--share' if args.share else '--listen' if args.listen else '--host ' + host} "
                "would let others reach this server: add --auth USER:PASS or --auth-file FILE"
            )
        if args.queue_size < 1:
            raise ValueError("--queue-size must be at least 1")
        demo = build_app(args.bundle, args.outputs, auth_on=auth is not None)
    except (CheckpointError, HistoryStoreError, ValueError) as e:
        print(f"mmgen webui: error: {e}", file=sys.stderr)
        return 2
    launch(demo, host=host, port=args.port, auth=auth, share=args.share, queue_size=args.queue_size,
           max_file_size=args.max_file_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
