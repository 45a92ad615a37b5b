"""Can a text encoder learn word order? The text-only half of binding "left of" to the right object.

    python scripts/word_order.py [--steps 300] [--positions relative relative:2 rope learned]

"a red circle to the left of a blue square" and "a blue square to the right of a red circle" (its
*converse*) describe one picture; "a red circle to the right of a blue square" (its *mirror*,
``mmgen.text.directions.mirror_prompt``) describes the mirror image in the converse's very words.
A text-to-image model draws the right picture only if its text encoder tells the two apart.

For each position kind, a fresh text encoder with the demo's shape (``configs/t2i_shapes.yaml``:
width 128, 4 layers, 4 heads) trains on this alone: mean-pooled states, projected, must put each
caption nearer its converse than every other caption's converse and every mirror in the batch
(InfoNCE, temperature 0.1, AdamW at ``--lr``). Reported: on captions of scenes drawn with another seed,
the share whose converse is nearer than their mirror. A bag of words scores 0 (the mirror holds the
converse's very words, so the two tie), a coin 0.5, an encoder that reads order near 1.

``relative:2`` is T5's relative buckets with directional heads (``rel_direction_init: 2.0``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mmgen.config import TextEncoderConfig  # noqa: E402
from mmgen.data.pretokenize import pad_rows  # noqa: E402
from mmgen.data.shapes import CONVERSE, ShapesDataset, phrasings  # noqa: E402
from mmgen.models.text_encoder import TextEncoder  # noqa: E402
from mmgen.models.text_to_image import WORD_ORDER_TEMPERATURE  # noqa: E402
from mmgen.text import TextTokenizer  # noqa: E402
from mmgen.text.directions import mirror_prompt  # noqa: E402


def caption_triples(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(caption, converse, mirror) for the first ``n`` two-object scenes of a shapes stream, sizes named."""
    data = ShapesDataset(seed=seed)
    triples, index = [], 0
    while len(triples) < n:
        scene, _ = data.scene(index)
        index += 1
        if scene.relation is None:
            continue
        plain = [(text, spec) for text, spec in phrasings(scene)
                 if spec.relation and spec.background is None and spec.objects[0].size and not text.startswith("an image")]
        caption = next(text for text, spec in plain if spec.relation == scene.relation)
        converse = next(text for text, spec in plain if spec.relation == CONVERSE[scene.relation])
        triples.append((caption, converse, mirror_prompt(caption)))
    return triples


def encoder_config(position: str, vocab_size: int) -> TextEncoderConfig:
    kind, _, init = position.partition(":")
    return TextEncoderConfig.from_dict(dict(vocab_size=vocab_size, max_len=32, dim=128, n_layers=4, n_heads=4,
                                            dropout=0.0, position=kind, rel_direction_init=float(init or 0.0)))


class Embedder(torch.nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.encoder = TextEncoder(config)
        self.proj = torch.nn.Linear(config.dim, config.dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states, _ = self.encoder(ids, mask)
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return F.normalize(self.proj(pooled), dim=-1)


def batch_ids(tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_rows([tokenizer.encode(t, max_length=32) for t in texts], tokenizer.pad_id or 0)


def converse_accuracy(model: Embedder, tokenizer, triples) -> float:
    with torch.no_grad():
        emb = model(*batch_ids(tokenizer, [t for triple in triples for t in triple])).view(len(triples), 3, -1)
    return ((emb[:, 0] * emb[:, 1]).sum(-1) > (emb[:, 0] * emb[:, 2]).sum(-1)).float().mean().item()


def train_one(position: str, tokenizer, train, test, steps: int, batch: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model = Embedder(encoder_config(position, tokenizer.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        rows = [train[i] for i in torch.randint(len(train), (batch,), generator=gen).tolist()]
        emb = model(*batch_ids(tokenizer, [t for triple in rows for t in triple])).view(batch, 3, -1)
        logits = emb[:, 0] @ torch.cat([emb[:, 1], emb[:, 2]]).T / WORD_ORDER_TEMPERATURE  # converses, then mirrors
        loss = F.cross_entropy(logits, torch.arange(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return {"position": position, "loss": loss.item(), "accuracy": converse_accuracy(model, tokenizer, test),
            "seconds": time.perf_counter() - start}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", nargs="+", default=["relative", "relative:2", "rope", "learned"],
                   help="position kinds to compare (relative:X = T5 buckets with rel_direction_init X)")
    p.add_argument("--steps", type=int, default=300, help="training steps per encoder (default 300)")
    p.add_argument("--batch", type=int, default=64, help="captions per step (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=4000, help="scenes whose captions it trains on (default 4,000)")
    p.add_argument("--test", type=int, default=500, help="captions scored, of scenes drawn with another seed (default 500)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if min(args.steps, args.train, args.test) <= 0 or args.batch <= 1:
        p.error("--steps, --train and --test must be positive, --batch at least 2")
    for position in args.positions:
        try:
            encoder_config(position, 8)
        except (ValueError, TypeError) as err:  # a kind the config refuses (ConfigError is a ValueError)
            p.error(f"--positions {position}: {err}")
    if args.threads:
        torch.set_num_threads(args.threads)
    train = caption_triples(args.train, seed=args.seed)
    test = caption_triples(args.test, seed=args.seed + 1000)
    tokenizer = TextTokenizer.train([t for triple in train + test for t in triple], kind="word")
    print(f"{'position':<12} {'converse nearer than mirror':>28} {'final loss':>11} {'seconds':>8}")
    for position in args.positions:
        r = train_one(position, tokenizer, train, test, args.steps, args.batch, args.lr, args.seed)
        print(f"{r['position']:<12} {r['accuracy']:>28.3f} {r['loss']:>11.3f} {r['seconds']:>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
