"""Numerical parity with transformers: random tiny HF models saved to a folder, loaded into mmgen.

No downloads: every reference model is built from a config with random weights.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mmgen.checkpoint import CheckpointError  # noqa: E402
from mmgen.models.hf import load_bert, load_gpt2, load_hf, load_t5_encoder  # noqa: E402

TOL = 1e-5


def _padded_batch(vocab: int, lengths=(9, 5, 7), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def _max_diff_on_valid(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    valid = mask.bool()
    return (a[valid] - b[valid]).abs().max().item()


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=48, n_layer=3, n_head=4)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    return path, model


def test_gpt2_logits_match_on_left_padded_batch(gpt2_folder):
    path, ref = gpt2_folder
    ours = load_gpt2(path)
    ids, mask = _padded_batch(97)
    mask = mask.flip(1)  # left padding: the harder case, positions must follow the mask
    ids = ids.flip(1)
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        got, _ = ours(ids, attention_mask=mask, position_ids=position_ids)
    assert _max_diff_on_valid(got, expected, mask) <= TOL


def test_gpt2_loss_matches(gpt2_folder):
    path, ref = gpt2_folder
    ours = load_gpt2(path)
    ids, _ = _padded_batch(97, lengths=(12, 12))
    with torch.no_grad():
        assert abs(ours(ids, labels=ids)[1].item() - ref(input_ids=ids, labels=ids).loss.item()) <= TOL


def test_gpt2_greedy_generation_matches_transformers(gpt2_folder):
    from mmgen.sampling import generate

    path, ref = gpt2_folder
    ours = load_gpt2(path)
    prompt = torch.tensor([[5, 17, 42, 8]])
    with torch.no_grad():
        expected = ref.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)[0, 4:].tolist()
    got = generate(ours, prompt, max_new_tokens=20, temperature=0.0)[0].tolist()
    assert got == expected


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    torch.manual_seed(1)
    cfg = transformers.BertConfig(
        vocab_size=101, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=64,
    )
    model = transformers.BertForMaskedLM(cfg).eval()
    path = tmp_path_factory.mktemp("bert")
    model.save_pretrained(path)
    return path, model


def test_bert_mlm_logits_match_on_padded_batch(bert_folder):
    path, ref = bert_folder
    ours = load_bert(path)
    ids, mask = _padded_batch(101)
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got, _ = ours(ids, attention_mask=mask, token_type_ids=types)
    assert _max_diff_on_valid(got, expected, mask) <= TOL


@pytest.mark.parametrize("proj", ["relu", "gated-gelu"])
def test_t5_encoder_hidden_states_match(tmp_path, proj):
    torch.manual_seed(2)
    cfg = transformers.T5Config(
        vocab_size=103, d_model=48, d_kv=16, d_ff=96, num_layers=3, num_heads=4, feed_forward_proj=proj,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
    )
    ref = transformers.T5EncoderModel(cfg).eval()
    # T5 initialises some weights to tiny values: perturb so that every path carries signal
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.save_pretrained(tmp_path)
    ours = load_t5_encoder(tmp_path)
    ids, mask = _padded_batch(103, lengths=(30, 11, 22))  # longer than max_exact: exercises log buckets
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got, _ = ours(ids, attention_mask=mask)
    assert _max_diff_on_valid(got, expected, mask) <= TOL
    assert type(load_hf(tmp_path)).__name__ == "TextEncoder"


def test_t5_encoder_from_full_t5_folder(tmp_path):
    torch.manual_seed(3)
    cfg = transformers.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    full = transformers.T5ForConditionalGeneration(cfg).eval()
    full.save_pretrained(tmp_path)
    ours = load_t5_encoder(tmp_path)
    ids, mask = _padded_batch(50, lengths=(6, 4))
    with torch.no_grad():
        expected = full.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        got, _ = ours(ids, attention_mask=mask)
    assert _max_diff_on_valid(got, expected, mask) <= TOL


def test_hf_folder_with_an_extra_tensor_is_refused(gpt2_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = gpt2_folder
    state = load_file(path / "model.safetensors")
    state["transformer.h.0.attn.surprise"] = torch.zeros(3)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="transformer.h.0.attn.surprise"):
        load_gpt2(tmp_path)


def test_hf_folder_missing_and_misshaped_tensors_are_named(gpt2_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = gpt2_folder
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    state = load_file(path / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"h\.1\.mlp\.c_fc\.bias"):
        load_gpt2(tmp_path)
    state = load_file(path / "model.safetensors")
    state["transformer.h.1.mlp.c_fc.bias"] = torch.zeros(5)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"ffn\.fc_in\.bias"):
        load_gpt2(tmp_path)


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_hf(tmp_path)


def test_bert_mlm_training_matches_transformers(tmp_path):
    """The BERT plateau check: from the same weights, on the same masked batches (our masking), our
    BERT and ``BertForMaskedLM`` follow the same loss curve under AdamW. A bug in labels, loss,
    attention, positions or the tied head would split the curves within a few steps."""
    import numpy as np

    from mmgen.data.text import MaskedTokenWindows, collate_windows

    torch.manual_seed(4)
    cfg = transformers.BertConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16, type_vocab_size=1,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref = transformers.BertForMaskedLM(cfg)
    ref.save_pretrained(tmp_path)
    ours = load_bert(tmp_path)
    rng = np.random.default_rng(0)
    corpus = np.tile(rng.integers(5, 61, size=40), 20)  # a repeating text: context predicts every mask
    windows = MaskedTokenWindows(corpus, 16, mask_id=4, vocab_size=61, special_ids=(0, 1, 2, 3, 4), probability=0.3)
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3) for m in (ref, ours)]
    curves: tuple[list[float], list[float]] = ([], [])
    for step in range(40):
        batch = collate_windows([windows[8 * step + j] for j in range(8)])
        for model, opt, curve in zip((ref, ours), opts, curves):
            if model is ref:
                loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
            else:
                loss = model(batch["input_ids"], labels=batch["labels"])[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
    assert max(abs(a - b) for a, b in zip(*curves)) < 2e-3
    assert curves[1][-1] < curves[1][0] - 0.5  # and it learns: the curves are not flat
