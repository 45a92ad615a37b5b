"""scripts/word_order.py: caption triples are what they say, a short run reports every position kind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import word_order  # noqa: E402

from mmgen.data.shapes import CONVERSE, parse_caption  # noqa: E402


def test_triples_are_caption_converse_and_mirror():
    triples = word_order.caption_triples(30, seed=0)
    assert len(triples) == 30 and len(set(triples)) > 20
    for caption, converse, mirror in triples:
        a, b, m = parse_caption(caption), parse_caption(converse), parse_caption(mirror)
        assert b.objects == a.objects[::-1] and b.relation == CONVERSE[a.relation]
        assert m.objects == a.objects and m.relation == CONVERSE[a.relation]
        assert sorted(mirror.split()) == sorted(converse.split())  # what only word order tells apart


def test_short_run_reports_each_position_kind(capsys):
    assert word_order.main(["--steps", "3", "--batch", "4", "--train", "20", "--test", "10",
                            "--positions", "rope", "relative:2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["rope", "relative:2"]
    for line in lines[1:]:
        assert 0.0 <= float(line.split()[1]) <= 1.0


@pytest.mark.parametrize("argv,match", [
    (["--positions", "sideways"], "--positions sideways"),
    (["--positions", "rope:2"], "--positions rope:2"),
    (["--steps", "0"], "must be positive"),
])
def test_bad_arguments_are_named(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        word_order.main(argv)
    assert exc.value.code == 2 and match in capsys.readouterr().err
