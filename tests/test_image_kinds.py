"""The vq and t2i model kinds: a few steps from YAML through the trainer, and what the export holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from mmgen.config import ConfigError
from mmgen.training.cli import main as train_main
from mmgen.training.cli import run
from mmgen.training.config import load_experiment

REPO = Path(__file__).resolve().parent.parent

TINY_VQ = {"image_size": 16, "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 0, "mid_res_blocks": 1,
           "codebook_size": 32, "code_dim": 4, "restart_every": 2}
TINY_TRAIN = {"max_steps": 3, "batch_size": 4, "warmup_steps": 1, "eval_every": 0, "eval_batches": 1,
              "log_every": 1, "checkpoint_every": 0, "tensorboard": False}


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    """A tiny VQ trained for 3 steps through `mmgen train` (the CLI) on rendered shapes."""
    tmp = tmp_path_factory.mktemp("vq")
    config = _yaml(tmp / "vq.yaml", {"model": {"kind": "vq", **TINY_VQ},
                                      "data": {"source": "shapes", "seed": 3, "val_length": 4},
                                      "train": {**TINY_TRAIN, "output_dir": str(tmp / "run")}})
    assert train_main(["--config", str(config)]) == 0
    return tmp / "run"


def test_vq_kind_trains_and_exports(vq_run):
    from mmgen.models.vq import VQModel

    vq = VQModel.from_pretrained(vq_run / "model")
    assert vq.config.image_size == 16 and vq.config.codebook_size == 32
    assert (vq_run / "metrics.csv").is_file()
    codes = vq.encode(torch.zeros(2, 3, 16, 16))
    assert codes.shape == (2, 4, 4)


def test_vq_kind_rejects_a_mismatched_image_size(tmp_path):
    exp = load_experiment(None, {"model.kind": "vq", "model.image_size": 16, "data.image_size": 32,
                                 "train.output_dir": str(tmp_path)})
    from mmgen.training.registry import get_kind

    with pytest.raises(ConfigError, match="image_size"):
        get_kind("vq").build_data(exp.data, exp.model, 0)


def test_shipped_configs_load():
    for name in ("vq_shapes", "t2i_shapes", "vq_emoji", "t2i_emoji", "t2i_base_gpu"):
        exp = load_experiment(REPO / "configs" / f"{name}.yaml")
        assert exp.kind in ("vq", "t2i"), name


@pytest.fixture(scope="module")
def t2i_run(vq_run, tmp_path_factory):
    """Codes from the tiny VQ, then a tiny t2i model for 3 steps through the trainer API."""
    from mmgen.data.pretokenize import _ShapesImages, encode_dataset
    from mmgen.models.vq import VQModel

    tmp = tmp_path_factory.mktemp("t2i")
    vq = VQModel.from_pretrained(vq_run / "model")
    encode_dataset(vq, _ShapesImages(40, "train", 0, 16), tmp / "codes", progress=False)
    # codes as a table: these codes record no source images to read two-tone factors from
    model = {"kind": "t2i",
             "text_encoder": {"max_len": 16, "dim": 16, "n_layers": 1, "n_heads": 2},
             "image_decoder": {"codebook_size": 32, "vocab_size": 33, "grid_h": 4, "grid_w": 4, "max_len": 16,
                               "context_dim": 16, "context_len": 16, "dim": 16, "n_layers": 1, "n_heads": 2,
                               "code_embedding": "table"}}
    config = _yaml(tmp / "t2i.yaml", {"model": model,
                                       "data": {"path": str(tmp / "codes"), "vq": str(vq_run / "model"), "val_count": 4},
                                       "train": {**TINY_TRAIN, "eval_every": 2, "output_dir": str(tmp / "run")}})
    summary = run(str(config))
    return tmp, summary


def test_t2i_kind_trains_and_exports_a_bundle(t2i_run):
    from mmgen.pipelines import TextToImagePipeline

    tmp, summary = t2i_run
    assert summary["steps"] == 3 and "val_loss" in summary
    pipe = TextToImagePipeline.from_pretrained(tmp / "run" / "model")
    # the text vocabulary came from the caption tokenizer
    assert pipe.text_encoder.config.vocab_size == pipe.tokenizer.vocab_size
    images = pipe("a small red circle", num_images=2, seed=0).images
    assert len(images) == 2 and images[0].size == (16, 16)
    saved = yaml.safe_load((tmp / "run" / "config.yaml").read_text())
    assert saved["model"]["text_vocab_size"] == pipe.tokenizer.vocab_size  # the run records what the data decided


def test_t2i_text_encoder_starts_from_a_folder_and_stays_frozen(t2i_run, capsys):
    from mmgen.config import BERTConfig
    from mmgen.models.bert import BERT
    from mmgen.models.hf import load_text_encoder
    from mmgen.pipelines import TextToImagePipeline
    from mmgen.text import TextTokenizer

    tmp, _ = t2i_run
    tokenizer = tmp / "run" / "model" / "text_tokenizer"  # the captions' tokenizer stands in for the encoder's
    vocab = TextTokenizer.from_pretrained(tokenizer).vocab_size
    torch.manual_seed(0)
    BERT(BERTConfig(vocab_size=vocab + 3, max_len=16, dim=16, n_layers=2, n_heads=2)).save_pretrained(tmp / "bert")
    args = [f"--model.text_encoder_from={tmp / 'bert'}", f"--data.tokenizer_path={tokenizer}",
            "--model.freeze_text_encoder=true", "--model.text_encoder.context_embeddings=true",
            f"--train.output_dir={tmp / 'from_bert'}"]
    assert run(str(tmp / "t2i.yaml"), args)["steps"] == 3
    pipe = TextToImagePipeline.from_pretrained(tmp / "from_bert" / "model")
    start = load_text_encoder(tmp / "bert")
    enc = pipe.text_encoder
    assert enc.config.n_layers == 2 and enc.config.vocab_size == vocab + 3  # the folder's encoder, not the YAML's
    assert enc.config.context_embeddings  # the YAML's context options kept
    got = enc.state_dict()
    for name, value in start.state_dict().items():
        assert torch.equal(got[name].float(), value.float()), name  # frozen: as loaded after training
    assert not torch.equal(enc.context_norm.weight, torch.ones_like(enc.context_norm.weight))  # the new part trained
    BERT(BERTConfig(vocab_size=vocab - 1, max_len=16, dim=16, n_layers=1, n_heads=2)).save_pretrained(tmp / "small")
    with pytest.raises(ConfigError, match="data.tokenizer_path"):
        run(str(tmp / "t2i.yaml"), [f"--model.text_encoder_from={tmp / 'small'}", f"--train.output_dir={tmp / 'x'}"])
    # from the command line: a clear error, no traceback
    assert train_main(["--config", str(tmp / "t2i.yaml"), f"--model.text_encoder_from={tmp / 'nowhere'}"]) == 2
    assert "nowhere/config.json: missing" in capsys.readouterr().err


def test_t2i_model_section_carries_every_model_field():
    # the section is TextToImageConfig plus text_vocab_size: a model field it forgot to pass on
    # would be accepted from the YAML and silently ignored
    from mmgen.config import TextToImageConfig
    from mmgen.training.image_kinds import T2IModelConfig

    section = T2IModelConfig(freeze_text_encoder=True, text_vocab_size=77)
    model = section.model_config()
    assert model.text_encoder.vocab_size == 77
    for f in dataclasses.fields(TextToImageConfig):
        if f.name != "text_encoder":
            assert getattr(model, f.name) == getattr(section, f.name), f.name


def test_t2i_kind_checks_codes_against_the_model(t2i_run):
    tmp, _ = t2i_run
    exp = load_experiment(tmp / "t2i.yaml", ["--model.image_decoder.codebook_size=64",
                                             "--model.image_decoder.vocab_size=65"])
    from mmgen.training.registry import get_kind

    with pytest.raises(ConfigError, match="codebook_size=64"):
        get_kind("t2i").build_data(exp.data, exp.model, 0)
    exp = load_experiment(tmp / "t2i.yaml", ["--model.text_vocab_size=3"])
    with pytest.raises(ConfigError, match="text_vocab_size=3"):
        get_kind("t2i").build_data(exp.data, exp.model, 0)


def test_t2i_kind_trains_on_canonical_captions_and_the_bundle_rewrites_prompts(t2i_run):
    """data.caption_rewrite=canonical_relations: every training caption is canonical ("right of" and
    "below" told from the other object), the caption tokenizer never sees those words, and the
    exported bundle rewrites prompts the same way."""
    from mmgen.data.pretokenize import read_captions
    from mmgen.data.shapes import canonical_caption, parse_caption
    from mmgen.pipelines import TextToImagePipeline
    from mmgen.training.registry import get_kind

    tmp, _ = t2i_run
    raw = read_captions(tmp / "codes")
    assert any(parse_caption(t).relation in ("right of", "below") for t in raw)
    overrides = ["--data.caption_rewrite=canonical_relations", f"--train.output_dir={tmp / 'run_canonical'}"]
    exp = load_experiment(tmp / "t2i.yaml", overrides)
    data = get_kind("t2i").build_data(exp.data, exp.model, 0)
    codes = data.train.dataset
    assert codes.captions == [canonical_caption(t) for t in raw] and codes.captions != raw
    assert data.tokenizer.token_to_id("below") is None
    summary = run(str(tmp / "t2i.yaml"), overrides)
    assert summary["steps"] == 3
    pipe = TextToImagePipeline.from_pretrained(tmp / "run_canonical" / "model")
    assert pipe.prompt_rewrite == "canonical_relations"
    assert pipe.rewrite_prompts(["a red circle below a blue square"]) == ["a blue square above a red circle"]

    with pytest.raises(ConfigError, match="caption_rewrite"):
        load_experiment(tmp / "t2i.yaml", ["--data.caption_rewrite=sideways"])


def test_t2i_kind_describes_codes_by_two_tone_factors(vq_run, t2i_run):
    """code_embedding "factors": the trainer fills each code's factors from shapes images before
    training, the export keeps them, and codes drawn are canonical ones."""
    from mmgen.data.pretokenize import _ShapesImages, encode_dataset
    from mmgen.models.code_factors import source_patches, two_tone_factors
    from mmgen.models.vq import VQModel
    from mmgen.pipelines import TextToImagePipeline
    from mmgen.training.image_kinds import _ShapesImages as VQImages

    tmp, _ = t2i_run
    vq = VQModel.from_pretrained(vq_run / "model").eval()
    items = _ShapesImages(40, "train", 0, 16)
    encode_dataset(vq, items, tmp / "codes_shapes", source=items.source, progress=False)
    factors = ["--model.image_decoder.code_embedding=factors", "--data.code_images=24",
               f"--data.path={tmp / 'codes_shapes'}", f"--train.output_dir={tmp / 'run_factors'}"]
    summary = run(str(tmp / "t2i.yaml"), factors)
    assert summary["steps"] == 3
    pipe = TextToImagePipeline.from_pretrained(tmp / "run_factors" / "model")
    # what the trainer set is the description of the VQ's codes on 24 images drawn as the VQ's were
    images = VQImages(0, 24, 16, heldout_every=4)
    want = two_tone_factors(*source_patches(vq, (images[i]["images"] for i in range(24))))
    dec = pipe.image_decoder
    assert torch.equal(dec.code_factors, want["factors"]) and torch.equal(dec.code_canonical, want["canonical"])
    from mmgen.sampling.image import sample_image_codes
    from mmgen.sampling.processors import SamplingParams, make_generators

    ctx, mask = torch.randn(3, 4, 16), torch.ones(3, 4, dtype=torch.long)
    codes = sample_image_codes(dec.eval(), ctx, mask, SamplingParams(temperature=1.0), 1.0, generators=make_generators(0, 3))
    assert torch.equal(dec.code_canonical[codes], codes)  # only canonical codes are drawn
    assert len(set(dec.code_canonical.tolist())) < 32  # and some codes are not (their factors are another's)
    # codes whose meta.json names no source cannot be described (no images to read the factors from)
    exp = load_experiment(tmp / "t2i.yaml", factors[:1])  # the fixture's codes record no source
    from mmgen.training.registry import get_kind

    with pytest.raises(ConfigError, match="names no shapes or folder source"):
        get_kind("t2i").build_data(exp.data, exp.model, 0)
    exp = load_experiment(tmp / "t2i.yaml", [*factors[:1], f"--data.path={tmp / 'codes_shapes'}", "--data.vq=null"])
    with pytest.raises(ConfigError, match="set data.vq"):
        get_kind("t2i").build_data(exp.data, exp.model, 0)


def test_t2i_kind_describes_folder_codes_by_the_folders_images(vq_run, tmp_path):
    import json

    from mmgen.data.folder import ImageCaptionFolder
    from mmgen.data.pretokenize import main as pretokenize
    from mmgen.data.shapes import ShapesDataset
    from mmgen.models.code_factors import source_patches, two_tone_factors
    from mmgen.models.text_to_image import TextToImage
    from mmgen.models.vq import VQModel
    from mmgen.training.registry import get_kind

    folder = tmp_path / "pictures"
    folder.mkdir()
    lines = []
    for i, item in enumerate(ShapesDataset(seed=9, length=12, image_size=16)):
        item["image"].save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": item["caption"]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    assert pretokenize(["--vq", str(vq_run / "model"), "--source", "folder", "--path", str(folder),
                        "--out", str(tmp_path / "codes")]) == 0
    config = _yaml(tmp_path / "t2i.yaml", {
        "model": {"kind": "t2i", "text_encoder": {"max_len": 16, "dim": 16, "n_layers": 1, "n_heads": 2},
                  "image_decoder": {"codebook_size": 32, "vocab_size": 33, "grid_h": 4, "grid_w": 4, "max_len": 16,
                                    "context_dim": 16, "context_len": 16, "dim": 16, "n_layers": 1, "n_heads": 2,
                                    "code_embedding": "factors"}},
        "data": {"path": str(tmp_path / "codes"), "vq": str(vq_run / "model"), "val_count": 2, "code_images": 8},
        "train": {**TINY_TRAIN, "output_dir": str(tmp_path / "run")}})
    exp = load_experiment(config)
    data = get_kind("t2i").build_data(exp.data, exp.model, 0)
    model = TextToImage(exp.model.replace(text_vocab_size=data.model_fields["text_vocab_size"]).model_config())
    data.prepare_model(model)
    vq = VQModel.from_pretrained(vq_run / "model").eval()
    pictures = ImageCaptionFolder(folder, image_size=16)
    want = two_tone_factors(*source_patches(vq, (pictures[i]["image"] for i in range(8))))
    assert torch.equal(model.image_decoder.code_factors, want["factors"])
    assert torch.equal(model.image_decoder.code_canonical, want["canonical"])
