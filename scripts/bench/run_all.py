"""Run the speed benchmarks (all, or those named) and print one results table.

    python scripts/bench/run_all.py [text_decode image_sampling text_encoder train_step] \
        [--threads 2] [--repeats N] [--smoke] [--json results.json]
    mmgen bench [same arguments]

Each benchmark times mmgen and its peer back to back in this process (see ``_common.py``);
a peer that is not installed is reported as such and the mmgen side still runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import image_sampling  # noqa: E402
import text_decode  # noqa: E402
import text_encoder  # noqa: E402
import train_step  # noqa: E402
from _common import environment, format_table, setup  # noqa: E402

# name -> (module, what it measures); run in this order (cheapest first)
BENCHMARKS = {
    "text_encoder": (text_encoder, "(c) TextEncoder vs T5EncoderModel, inference and forward + backward"),
    "text_decode": (text_decode, "(a) GPT decode vs GPT2LMHeadModel.generate, batch 1 and 8"),
    "image_sampling": (image_sampling, "(b) image codes vs dalle-pytorch generate_images, guidance off/on"),
    "train_step": (train_step, "(d) training step, GPT vs GPT-2 and text-to-image vs DALLE"),
}


def main(argv: Optional[list[str]] = None) -> int:
    listing = "\n".join(f"  {name:<15} {doc}" for name, (_, doc) in BENCHMARKS.items())
    parser = argparse.ArgumentParser(
        prog="mmgen bench", description=__doc__.splitlines()[0], epilog="benchmarks:\n" + listing,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both sides (default 2)")
    parser.add_argument("--repeats", type=int, help="timed repeats per side (default: each benchmark's own)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat: checks that it runs, not speed")
    parser.add_argument("--no-memory", action="store_true", help="train_step: skip the peak-memory subprocesses")
    parser.add_argument("--json", type=Path, help="also write all results to this JSON file")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    setup(args.threads)
    print(environment())
    results = []
    for name in args.names or list(BENCHMARKS):
        module = BENCHMARKS[name][0]
        kwargs = dict(threads=args.threads, warmup=args.warmup, smoke=args.smoke)
        if args.repeats or args.smoke:
            kwargs["repeats"] = 1 if args.smoke else args.repeats
        if name == "train_step":
            kwargs["memory"] = not args.no_memory
        t0 = time.perf_counter()
        print(f"\n== {name}: {BENCHMARKS[name][1]}", flush=True)
        part = module.run(**kwargs)
        print(format_table(part), f"\n({time.perf_counter() - t0:.0f} s)", flush=True)
        results += part
    print("\n== all results\n" + format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"environment": environment(), "results": [r.to_dict() for r in results]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
