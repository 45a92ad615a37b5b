"""The ``mmgen`` command: one entry point, subcommands implemented next to what they drive.

Each subcommand's module is imported only when it runs, so ``mmgen --help`` is instant and a
missing optional dependency only affects the command that needs it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional

# name -> (module:function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("mmgen.training.cli:main", "train a model from a YAML config (Accelerate)"),
    "train-demo": ("mmgen.demo:main", "train the demo bundle from scratch on this machine"),
    "sample": ("mmgen.sample_cli:main", "generate images from a bundle and write PNGs with metadata"),
    "generate": ("mmgen.text_cli:generate_main", "generate text with a GPT folder"),
    "fill-mask": ("mmgen.text_cli:fill_mask_main", "fill [MASK] tokens with a BERT folder"),
    "eval": ("mmgen.eval.cli:main", "evaluate a VQ or a text-to-image bundle"),
    "bench": ("mmgen.bench:main", "run speed benchmarks against peer implementations"),
    "webui": ("webui.app:main", "start the Gradio web UI"),
}
DATA_COMMANDS: dict[str, tuple[str, str]] = {
    "text": ("mmgen.data.text:main", "put a text corpus (e.g. Tiny Shakespeare) where configs expect it"),
    "emoji": ("mmgen.data.emoji:main", "build an emoji-scene image-caption folder from the Noto Color Emoji font"),
    "shapes": ("mmgen.data.shapes:main", "write a folder of procedural shapes images with captions"),
    "pretokenize": ("mmgen.data.pretokenize:main", "encode an image dataset into VQ codes once"),
}


def _usage(table: dict[str, tuple[str, str]], prog: str) -> str:
    width = max(len(k) for k in table)
    lines = [f"usage: {prog} <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in table.items()]
    lines += ["", f"Run '{prog} <command> --help' for the options of a command."]
    return "\n".join(lines)


def _dispatch(table: dict[str, tuple[str, str]], prog: str, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(table, prog))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prog}: unknown command {name!r}\n\n{_usage(table, prog)}", file=sys.stderr)
        return 2
    module_name, func_name = table[name][0].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            print(f"{prog} {name}: not available in this version of mmgen", file=sys.stderr)
            return 2
        raise
    result = getattr(module, func_name)(rest)
    return int(result or 0)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        return _dispatch(DATA_COMMANDS, "mmgen data", argv[1:])
    table = dict(COMMANDS, data=("", "prepare datasets: " + ", ".join(DATA_COMMANDS)))
    if argv and argv[0] in ("-h", "--help", "help") or not argv:
        print(_usage(table, "mmgen"))
        return 0
    return _dispatch(COMMANDS, "mmgen", argv)


if __name__ == "__main__":
    sys.exit(main())
