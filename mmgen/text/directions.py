"""Direction words and the mirrored caption: the contrast that tells whether a model reads word order.

"a red circle to the left of a blue square" and "a blue square to the left of a red circle" hold
the same words; only their order says which object is where. Mirroring every direction word
("left" <-> "right", "above" <-> "below", "top" <-> "bottom") turns a caption into a wrong
caption of the same picture, one a bag-of-words reader cannot tell from the right one: the
evaluation's direction probe (:func:`mmgen.eval.t2i.direction_probe`) is built on it.
"""

from __future__ import annotations

MIRRORED: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above", "top": "bottom", "bottom": "top"}


def mirror_prompt(text: str) -> str:
    """``text`` with every direction word mirrored (words split on single spaces, case kept as is)."""
    return " ".join(MIRRORED.get(word, word) for word in text.split(" "))
