"""Text to image: the decoder against its uncached self, guidance, seeds, cancel, completion, bundles."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from conftest import make_tiny_pipeline
from mmgen.checkpoint import CheckpointError
from mmgen.config import ConfigError, ImageDecoderConfig, TextEncoderConfig, TextToImageConfig
from mmgen.models.image_decoder import ImageDecoder
from mmgen.models.text_to_image import TextToImage
from mmgen.nn.kv_cache import KVCache
from mmgen.pipelines import TextToImagePipeline, read_png_metadata, save_png
from mmgen.sampling.image import Cancelled, sample_image_codes
from mmgen.sampling.processors import SamplingParams, make_generators


def _decoder(grid_position="learned", code_embedding="table"):
    torch.manual_seed(0)
    dec = ImageDecoder(
        ImageDecoderConfig(
            codebook_size=32, vocab_size=33, grid_h=4, grid_w=4, context_dim=24, context_len=6,
            max_len=16, dim=32, n_layers=2, n_heads=4, grid_position=grid_position, code_embedding=code_embedding,
        )
    ).eval()
    if code_embedding == "factors":
        factors = torch.stack([torch.arange(32) % 3, torch.arange(32) // 3 % 4, torch.arange(32) // 12], 1)
        factors[31] = factors[30]  # a code with another's factors: 30 is drawn for both
        canonical = torch.arange(32)
        canonical[31] = 30
        dec.set_code_factors(factors, canonical)
    return dec


@pytest.mark.parametrize("grid_position,code_embedding", [
    ("learned", "table"), ("rope", "table"), ("learned", "factors"), ("rope", "factors"),
])
def test_cached_equals_uncached_logits(grid_position, code_embedding):
    dec = _decoder(grid_position, code_embedding)
    codes = torch.randint(0, 32, (2, 16))
    inp = torch.cat([torch.full((2, 1), 32), codes[:, :-1]], 1)
    ctx, mask = torch.randn(2, 5, 24), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        full, _ = dec(inp, ctx, mask)
        cache = KVCache.for_config(dec.config, 2, max_len=dec.config.num_codes)
        steps = [dec(inp[:, :3], ctx, mask, cache=cache)[0]]
        steps += [dec(inp[:, t : t + 1], ctx, mask, cache=cache, start=t)[0] for t in range(3, 16)]
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5


def test_sampling_draws_each_code_where_training_predicts_it():
    """Greedy sampling and a teacher-forced forward agree: every sampled code is the argmax of
    the training-time logits at the step that predicts its grid position."""
    dec = _decoder(code_embedding="table")
    ctx, mask = torch.randn(3, 5, 24), torch.ones(3, 5, dtype=torch.long)
    codes = sample_image_codes(dec, ctx, mask, SamplingParams(top_k=1))  # (3, 16)
    codes_in, targets = dec.teacher_forcing(codes)
    with torch.no_grad():
        logits, _ = dec(codes_in, ctx, mask)
    assert torch.equal(logits.argmax(-1), targets)
    assert torch.equal(targets, codes)


def test_guidance_scale_one_equals_conditional_sampling():
    dec = _decoder()
    ctx, mask = torch.randn(3, 5, 24), torch.ones(3, 5, dtype=torch.long)
    params = SamplingParams(temperature=1.0)
    plain = sample_image_codes(dec, ctx, mask, params, 1.0, generators=make_generators(0, 3))
    # guidance 1 with an explicit unconditional branch must give the same codes
    null, null_mask = dec.null_contexts(3, 5)
    guided = sample_image_codes(dec, ctx, mask, params, 1.0, null, null_mask, generators=make_generators(0, 3))
    assert torch.equal(plain, guided)
    other = sample_image_codes(dec, ctx, mask, params, 3.0, generators=make_generators(0, 3))
    assert other.shape == plain.shape and (other >= 0).all() and (other < 32).all()


def test_guidance_combines_conditional_and_unconditional_logits():
    dec = _decoder()
    ctx, mask = torch.randn(1, 5, 24), torch.ones(1, 5, dtype=torch.long)
    null, null_mask = dec.null_contexts(1, 5)
    bos = torch.full((1, 1), 32)
    with torch.no_grad():
        cond = dec(bos, ctx, mask)[0][:, -1]
        uncond = dec(bos, null, null_mask)[0][:, -1]
    expected = (uncond + 3.0 * (cond - uncond)).argmax(-1)
    got = sample_image_codes(dec, ctx, mask, SamplingParams(temperature=1.0, top_k=1), 3.0)
    assert got[0, 0] == expected[0]


def test_same_seed_same_image_at_batch_1_and_4():
    pipe = make_tiny_pipeline()
    single = pipe("a small red circle", num_images=1, seed=11).images[0]
    four = pipe("a small red circle", num_images=4, seed=10).images
    assert single.tobytes() == four[1].tobytes()  # image 1 of the batch uses seed 10 + 1
    again = pipe("a small red circle", num_images=1, seed=11).images[0]
    assert single.tobytes() == again.tobytes()
    assert single.size == pipe.image_size == (16, 16)


def test_candidates_keep_the_most_likely_of_the_samples():
    from mmgen.pipelines import MAX_SEED
    from mmgen.sampling.processors import make_generators

    pipe = make_tiny_pipeline()
    prompt, C = "a small red circle", 4
    assert pipe(prompt, seed=3).images[0].tobytes() == pipe(prompt, seed=3, candidates=1).images[0].tobytes()
    best = pipe(prompt, num_images=1, seed=3, candidates=C).images[0]
    # the same candidates by hand: candidate j of image 0 draws from seed 3 + j * (MAX_SEED + 1)
    states, mask = pipe.encode_prompts([prompt] * C)
    gens = [make_generators(3 + j * (MAX_SEED + 1), 1)[0] for j in range(C)]
    codes = sample_image_codes(pipe.image_decoder, states, mask, SamplingParams(temperature=1.0, top_k=8), 1.0,
                               generators=gens)
    scores = pipe.log_likelihood(states, mask, codes)
    assert len(set(scores.tolist())) > 1  # the candidates differ, so the choice matters
    chosen = int(scores.argmax())  # decoded alone, as the pipeline decodes its one image
    assert best.tobytes() == pipe.decode_codes(codes[chosen : chosen + 1])[0].tobytes()
    # and the same candidate wins whatever else is in the batch: other codes would change whole
    # patches; the VQ's convolutions may round one level apart at another batch size
    batch = pipe([prompt, "a blue square"], num_images=2, seed=3, candidates=C).images
    diff = np.abs(np.asarray(batch[0], dtype=int) - np.asarray(best, dtype=int))
    assert diff.max() <= 1
    assert json.loads(best.info["mmgen"])["candidates"] == C


def test_log_likelihood_is_the_teacher_forced_sum():
    pipe = make_tiny_pipeline()
    states, mask = pipe.encode_prompts(["a red circle"])
    codes = torch.randint(0, 32, (1, 16))
    bos = torch.full((1, 1), pipe.image_decoder.config.bos_id)
    with torch.inference_mode():
        logits, _ = pipe.image_decoder(torch.cat([bos, codes[:, :-1]], 1), states, mask)
    expected = sum(float(logits[0, i].log_softmax(-1)[codes[0, i]]) for i in range(16))
    assert abs(float(pipe.log_likelihood(states, mask, codes)) - expected) < 1e-3


def test_log_likelihood_scores_a_merged_code_as_its_canonical_code():
    # an encoded image can hold codes the factors merge away (31 -> 30 in _decoder): they have no
    # logit of their own, and once scored -1e4 each; they must count as the code the model draws
    pipe = make_tiny_pipeline()
    pipe.image_decoder = _decoder(code_embedding="factors")
    states = torch.randn(1, 3, 24)
    mask = torch.ones(1, 3, dtype=torch.long)
    codes = torch.randint(0, 30, (1, 16))
    codes[0, [2, 9]] = 31
    merged = pipe.log_likelihood(states, mask, codes)
    assert float(merged) > -100  # finite and ordinary: no -1e4 terms
    assert torch.allclose(merged, pipe.log_likelihood(states, mask, codes.where(codes != 31, 30)))


def test_cancel_stops_within_one_step():
    pipe = make_tiny_pipeline()
    cancel = threading.Event()
    seen = []

    def on_preview(done, total, images):
        seen.append(done)
        cancel.set()

    with pytest.raises(Cancelled) as info:
        pipe("a small red circle", seed=0, callback=on_preview, callback_every=2, cancel=cancel)
    assert seen == [2] and info.value.step == 2


def test_previews_arrive_with_grey_unsampled_rows():
    pipe = make_tiny_pipeline()
    previews = []
    pipe("a blue square", seed=0, callback=lambda d, t, imgs: previews.append((d, imgs)), callback_every=4)
    assert [d for d, _ in previews] == [4, 8, 12, 16]
    first = previews[0][1][0]
    # after 4 codes (one code row = 4 pixel rows) the rows not sampled yet are grey
    assert all(first.getpixel((x, 15)) == (128, 128, 128) for x in range(16))


def test_completion_keeps_the_given_rows_exactly():
    pipe = make_tiny_pipeline()
    source = pipe("a green triangle", seed=3).images[0]
    codes = pipe.encode_image(source)
    out = pipe.complete(source, keep_rows=2, prompt="a large blue square", num_images=3, seed=5).images
    assert len(out) == 3 and read_png_metadata(out[0])["keep_rows"] == 2
    # the sampled codes keep the prefix exactly (pixels are decoded from them)
    dec = pipe.image_decoder
    states, mask = pipe.encode_prompts(["a large blue square"] * 3)
    sampled = sample_image_codes(dec, states, mask, SamplingParams(), 1.0, prefix_codes=codes[:, :8].repeat(3, 1), generators=make_generators(5, 3))
    assert torch.equal(sampled[:, :8], codes[:, :8].repeat(3, 1))
    assert not torch.equal(sampled[0, 8:], sampled[1, 8:])
    with pytest.raises(ValueError, match="keep_rows"):
        pipe.complete(source, keep_rows=4, prompt="x")


def test_pipeline_save_load_gives_identical_images(tmp_path):
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(tmp_path / "bundle")
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "bundle")
    a = pipe("a yellow circle to the left of a purple square", num_images=2, seed=4, guidance_scale=2.0).images
    b = loaded("a yellow circle to the left of a purple square", num_images=2, seed=4, guidance_scale=2.0).images
    assert [i.tobytes() for i in a] == [i.tobytes() for i in b]
    assert loaded.defaults["top_k"] == 8


def test_prompt_rewrite_reads_prompts_as_trained_and_survives_save_load(tmp_path):
    """A bundle trained on canonical captions (data.caption_rewrite) reads "a below b" as "b above a":
    the same context, the same images, the same attention tokens; without the rewrite they differ."""
    prompt, canonical = "a red circle below a blue square", "a blue square above a red circle"
    pipe = make_tiny_pipeline()
    assert not torch.equal(pipe.encode_prompts([prompt])[0], pipe.encode_prompts([canonical])[0])
    pipe.prompt_rewrite = "canonical_relations"
    assert pipe.rewrite_prompts([prompt, "a red circle"]) == [canonical, "a red circle"]
    assert torch.equal(pipe.encode_prompts([prompt])[0], pipe.encode_prompts([canonical])[0])
    pipe.save_pretrained(tmp_path / "bundle")
    index = json.loads((tmp_path / "bundle" / "model_index.json").read_text())
    assert index["prompt_rewrite"] == "canonical_relations"
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "bundle")
    assert loaded.prompt_rewrite == "canonical_relations" and "prompt_rewrite" not in loaded.extras
    a = loaded(prompt, num_images=2, seed=3).images
    b = loaded(canonical, num_images=2, seed=3).images
    assert [i.tobytes() for i in a] == [i.tobytes() for i in b]
    assert read_png_metadata(save_png(a[0], tmp_path / "a.png"))["prompt"] == prompt  # the user's words are kept
    tokens, _ = loaded.cross_attention_maps(prompt, a[0])
    assert tokens[:3] == ["a", "blue", "square"]

    index["prompt_rewrite"] = "sideways"
    (tmp_path / "bundle" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="unknown prompt_rewrite 'sideways'"):
        TextToImagePipeline.from_pretrained(tmp_path / "bundle")


def test_png_metadata_round_trip(tmp_path):
    pipe = make_tiny_pipeline()
    img = pipe("a white triangle", negative_prompt="blue", num_images=1, seed=2**53 - 5, guidance_scale=2.5, top_p=0.9).images[0]
    path = save_png(img, tmp_path / "x.png")
    meta = read_png_metadata(path)
    assert meta["prompt"] == "a white triangle" and meta["negative_prompt"] == "blue"
    assert meta["seed"] == 2**53 - 5 and meta["guidance_scale"] == 2.5 and meta["top_p"] == 0.9
    # the A1111 line alone is enough too
    from PIL import Image

    params = Image.open(path).text["parameters"]
    assert "Seed: 9007199254740987" in params and "CFG scale: 2.5" in params
    only_a1111 = save_png(img, tmp_path / "y.png", metadata={"parameters": params})
    back = read_png_metadata(only_a1111)
    assert back["seed"] == meta["seed"] and back["prompt"] == "a white triangle" and back["negative_prompt"] == "blue"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prompt": ""}, "empty"),
        ({"prompt": "   "}, "empty"),
        ({"num_images": 0}, "num_images"),
        ({"num_images": 10_000}, "num_images"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**60}, "seed"),
        ({"guidance_scale": -2}, "guidance_scale"),
        ({"prompt": "x" * 50_000}, "characters"),
        ({"candidates": 0}, "candidates"),
        ({"candidates": 33}, "candidates"),
        ({"candidates": True}, "candidates"),
        ({"num_images": 64, "candidates": 16}, "candidates"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, match):
    pipe = make_tiny_pipeline()
    args = {"prompt": "a red circle", **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(args.pop("prompt"), **args)


def test_unknown_bundle_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="bundle folder not found"):
        TextToImagePipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="model_index.json"):
        TextToImagePipeline.from_pretrained(tmp_path)


def test_long_prompt_is_truncated_with_a_warning():
    pipe = make_tiny_pipeline()
    with pytest.warns(UserWarning, match="truncated"):
        pipe("a red circle " * 40, seed=0)


def test_text_to_image_training_forward_and_caption_dropout():
    cfg = TextToImageConfig(
        text_encoder=TextEncoderConfig(vocab_size=50, max_len=16, dim=24, n_layers=1, n_heads=4),
        image_decoder=ImageDecoderConfig(
            codebook_size=32, vocab_size=33, grid_h=4, grid_w=4, context_dim=24, context_len=6, max_len=16,
            dim=32, n_layers=1, n_heads=4, caption_dropout=0.5,
        ),
    )
    torch.manual_seed(0)
    model = TextToImage(cfg)
    ids, mask, codes = torch.randint(0, 50, (8, 6)), torch.ones(8, 6, dtype=torch.long), torch.randint(0, 32, (8, 16))
    logits, loss = model(ids, mask, codes)
    assert logits.shape == (8, 16, 32) and loss.item() > 0
    loss.backward()
    assert model.image_decoder.null_context.grad is not None  # the null context learns
    model.eval()
    a, _ = model(ids, mask, codes)
    b, _ = model(ids, mask, codes)
    assert torch.equal(a, b)  # no dropout at eval
    with pytest.raises(ConfigError, match="context_dim"):
        TextToImageConfig(text_encoder=TextEncoderConfig(dim=48, n_heads=4), image_decoder=cfg.image_decoder)


def test_context_embeddings_put_each_word_beside_the_states(tmp_path):
    pipe = make_tiny_pipeline(context_embeddings=True, context_positions=False)
    enc = pipe.text_encoder
    prompts = ["a red circle", "a small blue square at the top left"]
    context, mask = pipe.encode_prompts(prompts)
    batch = pipe.tokenizer.encode_batch(prompts, max_length=12, padding="longest")
    ids, ids_mask = batch["input_ids"], batch["attention_mask"]
    T = ids.shape[1]
    with torch.no_grad():
        states, _ = enc(ids, ids_mask)
        words = enc.context_norm(enc.trunk.tok_emb(ids))
    assert context.shape == (2, 2 * T, 32)
    torch.testing.assert_close(context[:, :T], states)
    torch.testing.assert_close(context[:, T:], words)  # one word each: no other word moves them
    assert torch.equal(mask, torch.cat([ids_mask, ids_mask], 1))
    # the context norm is saved with the bundle; a negative prompt of another length pads apart
    pipe.save_pretrained(tmp_path / "bundle")
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "bundle")
    assert loaded.text_encoder.config.context_embeddings
    kw = dict(num_images=2, seed=3, guidance_scale=2.0, negative_prompt="a green triangle at the bottom")
    assert [i.tobytes() for i in pipe(prompts[1], **kw).images] == [i.tobytes() for i in loaded(prompts[1], **kw).images]
    # training: the decoder reads both halves, the null context stands in for both
    cfg = TextToImageConfig(
        text_encoder=TextEncoderConfig(vocab_size=50, max_len=16, dim=24, n_layers=1, n_heads=4, context_embeddings=True),
        image_decoder=ImageDecoderConfig(codebook_size=32, vocab_size=33, grid_h=4, grid_w=4, context_dim=24,
                                         context_len=6, max_len=16, dim=32, n_layers=1, n_heads=4, caption_dropout=0.5),
    )
    torch.manual_seed(0)
    model = TextToImage(cfg)
    _, loss = model(torch.randint(0, 50, (8, 6)), torch.ones(8, 6, dtype=torch.long), torch.randint(0, 32, (8, 16)))
    loss.backward()
    assert model.text_encoder.context_norm.weight.grad.abs().sum() > 0


def test_context_positions_place_each_word_and_leave_the_states(tmp_path):
    pipe = make_tiny_pipeline(context_embeddings=True, context_positions=True)
    enc = pipe.text_encoder
    prompts = ["a red circle to the left of a red square"]  # "red" twice, in two places
    context, _ = pipe.encode_prompts(prompts)
    ids = pipe.tokenizer.encode_batch(prompts, max_length=12, padding="longest")["input_ids"]
    T = ids.shape[1]
    red = [t for t in range(T) if ids[0, t] == ids[0, 1]]
    assert len(red) == 2
    with torch.no_grad():
        states, _ = enc(ids)
        places = enc.context_norm(enc.trunk.tok_emb(ids) + enc.context_pos[:T])
    torch.testing.assert_close(context[:, :T], states)  # the encoder does not see the table
    torch.testing.assert_close(context[:, T:], places)
    assert not torch.allclose(context[0, T + red[0]], context[0, T + red[1]])  # one word, two places
    with torch.no_grad():
        enc.context_pos.zero_()  # without places the two are the same word again
    context, _ = pipe.encode_prompts(prompts)
    torch.testing.assert_close(context[0, T + red[0]], context[0, T + red[1]])
    # the table is saved with the bundle
    with torch.no_grad():
        enc.context_pos.normal_()
    pipe.save_pretrained(tmp_path / "bundle")
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "bundle")
    assert torch.equal(loaded.text_encoder.context_pos, enc.context_pos)
    # and trains with the model
    cfg = TextToImageConfig(
        text_encoder=TextEncoderConfig(vocab_size=50, max_len=16, dim=24, n_layers=1, n_heads=4,
                                       context_embeddings=True, context_positions=True),
        image_decoder=ImageDecoderConfig(codebook_size=32, vocab_size=33, grid_h=4, grid_w=4, context_dim=24,
                                         context_len=6, max_len=16, dim=32, n_layers=1, n_heads=4, caption_dropout=0.0),
    )
    model = TextToImage(cfg)
    _, loss = model(torch.randint(0, 50, (8, 6)), torch.ones(8, 6, dtype=torch.long), torch.randint(0, 32, (8, 16)))
    loss.backward()
    assert model.text_encoder.context_pos.grad[:6].abs().sum(-1).gt(0).all()
    assert model.text_encoder.context_pos.grad[6:].abs().sum() == 0  # places past the caption stay put
    with pytest.raises(ConfigError, match="context_positions needs context_embeddings"):
        TextEncoderConfig(context_embeddings=False, context_positions=True)


@pytest.mark.parametrize("context_embeddings", [False, True])
def test_cross_attention_maps_cover_prompt_tokens(context_embeddings):
    pipe = make_tiny_pipeline(context_embeddings=context_embeddings, context_positions=context_embeddings)
    img = pipe("a small red circle", seed=0).images[0]
    tokens, maps = pipe.cross_attention_maps("a small red circle", img)
    assert tokens[:4] == ["a", "small", "red", "circle"]
    assert maps.shape == (len(tokens), 4, 4)
    assert torch.allclose(maps.sum(0), torch.ones(4, 4), atol=1e-4)  # each code's attention sums to 1


def test_cross_attention_maps_put_the_first_step_at_the_first_code():
    pipe = make_tiny_pipeline(context_embeddings=False, context_positions=False)  # one context row per token
    img = pipe("a small red circle", seed=0).images[0]
    tokens, maps = pipe.cross_attention_maps("a small red circle", img)
    dec = pipe.image_decoder
    # the first step (the start token's query) predicts the first code, at row 0, column 0
    states, mask = pipe.encode_prompts(["a small red circle"])
    modules = [b.cross_attn for b in dec.trunk.blocks]
    for m in modules:
        m.record_weights = True
    with torch.no_grad():
        dec(torch.full((1, 1), dec.config.bos_id), states, mask)
    first = torch.stack([m.last_weights[0].mean(0) for m in modules]).mean(0)[0, : len(tokens)]  # (T,)
    for m in modules:
        m.record_weights, m.last_weights = False, None
    assert torch.allclose(maps[:, 0, 0], first, atol=1e-5)


def test_text_encoder_starts_from_bert_and_t5_folders(tmp_path):
    from mmgen.config import BERTConfig
    from mmgen.models.bert import BERT
    from mmgen.models.hf import load_text_encoder

    torch.manual_seed(0)
    bert = BERT(BERTConfig(vocab_size=40, max_len=16, dim=24, n_layers=2, n_heads=4)).eval()
    bert.save_pretrained(tmp_path / "bert")
    enc = load_text_encoder(tmp_path / "bert").eval()
    ids = torch.randint(0, 40, (2, 7))
    with torch.no_grad():
        assert torch.allclose(enc(ids)[0], bert.encode(ids), atol=1e-6)
    transformers = pytest.importorskip("transformers")
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=40, d_model=24, d_kv=6, d_ff=48, num_layers=1, num_heads=4)).eval()
    t5.save_pretrained(tmp_path / "t5")
    enc = load_text_encoder(tmp_path / "t5")
    with torch.no_grad():
        assert torch.allclose(enc(ids)[0], t5(input_ids=ids).last_hidden_state, atol=1e-5)
    frozen = TextToImage(TextToImageConfig(text_encoder=enc.config, image_decoder=ImageDecoderConfig(context_dim=24, dim=32, n_heads=4, n_layers=1), freeze_text_encoder=True))
    assert not any(p.requires_grad for p in frozen.text_encoder.parameters())
    frozen.train()
    assert frozen.image_decoder.training and not frozen.text_encoder.trunk.training  # no dropout in what is frozen
