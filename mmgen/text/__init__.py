"""Text side of mmgen: tokenizers that turn prompts and corpora into ids."""

from mmgen.text.tokenizer import KINDS, ROLES, TextTokenizer, TokenizerFileError, TruncationWarning

__all__ = ["KINDS", "ROLES", "TextTokenizer", "TokenizerFileError", "TruncationWarning"]
