"""The rules for what a caller may ask for: one prompt check and one seed rule.

The pipelines, the history store and the web UI all apply these, so a prompt or a seed that one
of them accepts is never refused by another, and every refusal reads the same. Standard library
only: the store is a low layer that must not pull in torch.
"""

from __future__ import annotations

import numbers
import secrets
from typing import Any, Optional

# Seeds must survive a trip through JavaScript (the web UI, gradio_client) unchanged: 2^53 is the
# largest integer a double holds exactly.
MAX_SEED = 2**53
RANDOM_SEEDS = 2**32  # a seed picked for the caller is below this, short enough to read and type
MAX_PROMPT_CHARS = 20_000  # refuse absurd inputs before tokenizing them


def check_seed(seed: Any) -> int:
    """A seed as an ``int`` in [0, MAX_SEED]; ValueError otherwise.

    Whole-valued floats are accepted (Gradio number boxes and JSON clients send 42.0 for 42);
    bools and strings are not numbers here.
    """
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number in [0, 2^53 = {MAX_SEED}], got {seed!r}")
    return int(seed)


def resolve_seed(seed: Optional[Any]) -> int:
    """The seed policy: ``None`` picks a random seed (reported back, so the result can be
    reproduced); anything else must pass :func:`check_seed`."""
    if seed is None:
        return secrets.randbelow(RANDOM_SEEDS)
    return check_seed(seed)


def check_prompt(prompt: Any, name: str = "prompt", max_chars: int = MAX_PROMPT_CHARS, allow_empty: bool = True) -> str:
    """``prompt`` if it is text of at most ``max_chars`` characters (and, unless ``allow_empty``,
    not blank); TypeError / ValueError naming ``name`` otherwise."""
    if not isinstance(prompt, str):
        raise TypeError(f"the {name} must be text, got {type(prompt).__name__}")
    if not allow_empty and not prompt.strip():
        raise ValueError(f"the {name} is empty: describe what you want")
    if len(prompt) > max_chars:
        raise ValueError(f"the {name} is {len(prompt)} characters long; the limit is {max_chars}")
    return prompt
