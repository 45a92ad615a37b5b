"""``mmgen train-demo``: train the demo bundle from scratch on this machine (2 CPU cores, ~75 min).

Stages, each with its own time budget (options), one progress line each:

1. **vq**: the VQ tokenizer on the shapes world (``configs/vq_shapes.yaml``);
2. **codes**: pretokenize ``--n-images`` shapes images into VQ codes;
3. **t2i**: the text-to-image model on those codes (``configs/t2i_shapes.yaml``);
4. **gpt** / **bert**: Shakespeare models for the text tabs, 15 minutes each (``configs/gpt_shakespeare_bpe.yaml``,
   ``configs/bert_shakespeare.yaml``); skipped with a message when the corpus is not available;
5. **tune**: guidance scale, top-k, temperature and candidates (reranking) measured on validation prompts (a seed the
   final evaluation does not use); the best become the bundle's sampling defaults;
6. **bundle**: fp16 safetensors, ``gpt/`` and ``bert/`` beside the text-to-image components, and
   ``model_index.json`` recording how it was trained (configs, git commit, seeds, timings) and the
   evaluation figures of the final bundle (``mmgen eval t2i`` on seed 1234 prompts).

    mmgen train-demo --out runs/demo                     # then: --ship copies the bundle to mmgen/assets/demo
    mmgen train-demo --out runs/demo --reuse             # keep the finished stages of an earlier run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SHAKESPEARE = Path("data/shakespeare/input.txt")  # where `mmgen data text --source shakespeare` writes
BUNDLE_LIMIT_MB = 30.0

# The sampling grid searched by the tune stage, every combination, then reranking at the best
# sampled (not greedy) setting.
# Earlier searches of wider ranges (guidance 1.75-3, top-k 8/32, temperature 1.3) never won: guidance
# above 1.5 loses one-object accuracy fast (3.0 draws nothing right).
GUIDANCE = (1.0, 1.25, 1.5)
TOP_K = (1, 2, 4)
TEMPERATURE = (0.7, 1.0)
CANDIDATES = (1, 4)  # images sampled per image shown, the most likely kept
# One-object prompts are learnt early (exact 1.0 on seen pairs), two-object relations are not: the
# t2i stage's images are 3/4 two-object scenes, where the shapes world draws 1/2.
TWO_OBJECTS = 0.75


def recorded_command(argv: Sequence[str]) -> str:
    """The command line as the bundle records it: ``--shakespeare FILE`` keeps only the file's name
    (the text is imported into data/; where it lay on the builder's machine is not provenance,
    and a shipped bundle should not carry local paths)."""
    out, take_name = [], False
    for arg in argv:
        if take_name:
            arg, take_name = Path(arg).name, False
        elif arg == "--shakespeare":
            take_name = True
        elif arg.startswith("--shakespeare="):
            arg = "--shakespeare=" + Path(arg.split("=", 1)[1]).name
        out.append(arg)
    return " ".join(["mmgen train-demo", *out])


def _progress(stage: str, message: str, t0: float) -> None:
    print(f"[train-demo] {stage:<6} {message} ({time.time() - t0:.0f} s)", flush=True)


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _train(config: Path, out: Path, minutes: float, seed: int, extra: Sequence[str] = (), processes: int = 1,
           threads: int = 1) -> dict[str, Any]:
    """One ``mmgen train`` run; returns its summary and resolved experiment.

    With ``processes`` > 1 the run is data-parallel over that many Accelerate processes of
    ``threads`` threads each, launched as a subprocess; otherwise it runs in this process. On a
    CPU that is how both cores pay off for a small model: one thread of a width-128 transformer
    is already ~95 % as fast as two, while two processes (gloo DDP, one thread each) trained ~1.8x
    the samples per second on an AMX Xeon (on an AVX2 EPYC, ~155 samples/s either way).
    ``train.batch_size`` is the global batch either way.
    """
    from mmgen.config import read_json
    from mmgen.training.config import load_experiment

    overrides = [f"--train.output_dir={out}", f"--train.max_time_s={minutes * 60:.0f}", f"--train.seed={seed}", *extra]
    record: dict[str, Any] = {}
    if processes > 1:
        import os

        import torch

        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if not torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "true"  # `--cpu --num_processes N` would silently start one process
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "mmgen.training.cli", "--config", str(config), *overrides]
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"the {processes}-process training run failed (exit {proc.returncode}): {' '.join(cmd)}")
        summary = read_json(out / "train_summary.json", RuntimeError)
        if summary.get("num_processes") != processes:
            raise RuntimeError(f"asked for {processes} processes, the run had {summary.get('num_processes')}")
        record = {"processes": processes, "threads_per_process": threads}
    else:
        from mmgen.training.cli import run

        summary = run(str(config), overrides)
    return {"summary": summary, "experiment": load_experiment(str(config), overrides).to_dict(), **record}


def check_code_factors(vq, codes_dir: Path, overrides: Sequence[str], log=print) -> dict[str, Any]:
    """Before the text-to-image stage: do this VQ's codes survive the factors' merge of equal codes?

    ``code_embedding: factors`` (the config's default) draws one canonical code per factor tuple.
    With the demo's VQ that changes 4 % of decoded images; a VQ that spends several codes on one
    patch (one trained for fewer steps: 894 instead of 3,588 on a slower CPU) lost half of them,
    capping single-object prompts near 0.5. Below ``MIN_FIDELITY`` the stage trains with a free
    row per code instead (``table``), unless ``--t2i-override`` names the code embedding itself.
    Returns the check's record (empty when factors are not used).
    """
    from mmgen.config import read_json
    from mmgen.training.config import load_experiment, parse_overrides
    from mmgen.training.image_kinds import MIN_FIDELITY, describe_codes

    experiment = load_experiment(str(CONFIGS / "t2i_shapes.yaml"), list(overrides))
    if experiment.model.image_decoder.code_embedding != "factors":
        return {}
    source = read_json(codes_dir / "meta.json").get("source", {})
    fidelity = describe_codes(vq, source, experiment.data.code_images)["fidelity"]
    chosen_by_user = "model.image_decoder.code_embedding" in parse_overrides(overrides)
    choice = "factors" if fidelity >= MIN_FIDELITY or chosen_by_user else "table"
    log(f"[train-demo] codes  merging codes with equal factors keeps {fidelity:.1%} of decoded images unchanged "
        f"(needs {MIN_FIDELITY:.0%}): code_embedding {choice}", flush=True)
    return {"fidelity": round(fidelity, 4), "min_fidelity": MIN_FIDELITY, "code_embedding": choice}


def _mean_exact(results: dict[str, Any]) -> float:
    from mmgen.eval.t2i import GROUPS

    return sum(results[g]["model"]["exact"] for g in GROUPS) / len(GROUPS)


def tune_sampling(pipe, n_per_group: int, seed: int, budget_s: float, log=print) -> tuple[dict, list[dict]]:
    """Grid search over guidance scale, top-k and temperature, then candidates, on validation prompts.

    Reranking is tried at the best *sampled* setting (top-k > 1) even when greedy decoding wins
    the grid: greedy draws one image per prompt, so there is nothing to rerank, while sampling
    plus reranking can beat it (a greedy decoder tends to leave out one of two objects).
    Returns the best settings (by mean exact match over the four groups) and every measurement;
    stops early, keeping the best so far, when ``budget_s`` is spent.
    """
    import itertools

    from mmgen.eval.t2i import evaluate_t2i

    t0 = time.time()
    best, best_score = None, -1.0
    sampled, sampled_score = None, -1.0  # the best with top-k > 1
    trials = []

    def to_measure():
        # greedy sampling (top-k 1) ignores the temperature and draws the same image every time
        for g, k, t in itertools.product(GUIDANCE, TOP_K, TEMPERATURE):
            if k != 1 or t == TEMPERATURE[0]:
                yield {"guidance_scale": g, "top_k": k, "temperature": t, "top_p": None, "candidates": 1}
        if sampled is not None:
            yield from ({**sampled, "candidates": n} for n in CANDIDATES[1:])

    for settings in to_measure():
        if best is not None and time.time() - t0 > budget_s:
            log(f"  tune budget ({budget_s:.0f} s) spent")
            break
        r = evaluate_t2i(pipe, n_per_group=n_per_group, seed=seed, progress=False, probe=False, **settings)
        score = _mean_exact(r)
        trials.append({**settings, "mean_exact": round(score, 4), "summary": r["summary"]})
        log(f"  guidance {settings['guidance_scale']:<4} top_k {settings['top_k']!s:<4} temperature "
            f"{settings['temperature']:<4} candidates {settings['candidates']:<2} -> mean exact {score:.3f} {r['summary']}")
        if score > best_score:
            best, best_score = settings, score
        if settings["top_k"] != 1 and settings["candidates"] == 1 and score > sampled_score:
            sampled, sampled_score = settings, score
    return best, trials


def _copy_text_model(src: Path, dst: Path) -> None:
    """A GPT/BERT export into the bundle, weights in fp16 (the tokenizer files as they are)."""
    import torch

    from mmgen.pipelines import load_text_model

    model = load_text_model(src)
    model.save_pretrained(dst, dtype=torch.float16)
    for f in src.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy2(f, dst / f.name)


def _folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


# The run ---------------------------------------------------------------------------------


@dataclass
class DemoRun:
    """What the stages share: the options, the work folder, and the record of how the bundle was
    made (``model_index.json``'s ``"training"``), which each stage adds to."""

    args: argparse.Namespace
    out: Path  # the work folder: one sub-folder per stage
    bundle: Path
    record: dict[str, Any]
    # --reuse keeps an earlier run's stages, and with them what that run recorded about them
    # (training summaries, timings), read back from the bundle it wrote; empty otherwise
    previous: dict[str, Any]
    t0: float  # when the run started (the progress lines count from it)
    previous_defaults: dict[str, Any] = field(default_factory=dict)  # that bundle's sampling defaults
    timings: dict[str, float] = field(default_factory=dict)
    made_by: dict[str, str] = field(default_factory=dict)  # stage -> the command that ran it (an earlier one's when reused)
    reused: list[str] = field(default_factory=list)

    def finished(self, folder: Path) -> bool:
        """Whether --reuse keeps the training stage whose output is ``folder``."""
        return self.args.reuse and (folder / "model" / "config.json").is_file()

    def earlier_maker(self, name: str) -> Optional[str]:
        """The command of the earlier run that made stage ``name``, as recorded_command writes it."""
        previous = self.previous
        if name in previous.get("made_by", {}):
            command = previous["made_by"][name]
        elif name in previous.get("reused_stages", []):  # bundles from before made_by
            command = previous.get("earlier_command")
        else:
            command = previous.get("command")
        prefix = "mmgen train-demo "
        return recorded_command(command[len(prefix):].split()) if command and command.startswith(prefix) else command

    def stage_done(self, name: str, start: float, message: str, was_reused: bool = False) -> None:
        """Record stage ``name``'s time and maker (an earlier run's when reused) and print its line."""
        self.timings[name] = round(time.time() - start, 1)
        self.made_by[name] = (self.earlier_maker(name) if was_reused else None) or self.record["command"]
        if was_reused:
            self.reused.append(name)
            self.timings[name] = self.previous.get("timings_s", {}).get(name, self.timings[name])
            if name in self.previous and name not in self.record:
                self.record[name] = self.previous[name]
            message += " (reused)"
        _progress(name, f"{message} in {self.timings[name]:.0f} s", self.t0)


def start_run(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> Optional[DemoRun]:
    """Check the options and set up the work folder; None (the reason on stderr) when refused.

    A bad --t2i-override fails here, not after the VQ stage's minutes.
    """
    from mmgen.config import ConfigError, read_json
    from mmgen.training.config import load_experiment

    try:
        load_experiment(str(CONFIGS / "t2i_shapes.yaml"), list(args.t2i_override))
    except ConfigError as e:
        print(f"mmgen train-demo: error: --t2i-override: {e}", file=sys.stderr)
        return None

    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = Path(args.out)
    bundle = Path(args.bundle) if args.bundle else out / "bundle"
    if out.exists() and not args.reuse and any(out.iterdir()):
        print(f"mmgen train-demo: error: {out} is not empty; pass --reuse to keep its finished stages, "
              f"or pick another --out", file=sys.stderr)
        return None
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    record: dict[str, Any] = {"git_commit": _git_commit(), "seed": args.seed, "threads": args.threads,
                              "command": recorded_command(argv if argv is not None else sys.argv[1:])}
    previous: dict[str, Any] = {}
    previous_defaults: dict[str, Any] = {}
    if args.reuse and (bundle / "model_index.json").is_file():
        index = read_json(bundle / "model_index.json")
        previous, previous_defaults = index.get("training", {}), index.get("defaults", {})
    return DemoRun(args=args, out=out, bundle=bundle, record=record, previous=previous, t0=t0,
                   previous_defaults=previous_defaults)


# The stages ------------------------------------------------------------------------------


def vq_stage(run: DemoRun):
    """1. The VQ tokenizer on the shapes world; returns it, checked by the shapes reader after a round trip."""
    from mmgen.eval.t2i import shapes_reader_roundtrip
    from mmgen.models.vq import VQModel

    args, s = run.args, time.time()
    vq_dir = run.out / "vq"
    reused = run.finished(vq_dir)
    if not reused:
        shutil.rmtree(vq_dir, ignore_errors=True)
        run.record["vq"] = _train(CONFIGS / "vq_shapes.yaml", vq_dir, args.vq_minutes, args.seed,
                                  [f"--data.seed={args.seed}"])
    elif "vq" in run.previous:  # keep its training record; the round trip is measured again below
        run.record["vq"] = dict(run.previous["vq"])
    vq = VQModel.from_pretrained(vq_dir / "model")
    roundtrip = shapes_reader_roundtrip(vq, n=200)
    run.record.setdefault("vq", {})["shapes_reader_roundtrip"] = roundtrip
    run.stage_done("vq", s, f"VQ trained; shapes reader after the round trip: exact {roundtrip['exact']:.3f}", reused)
    return vq


def codes_stage(run: DemoRun, vq) -> None:
    """2. ``--n-images`` shapes images (``--two-objects`` of them two-object scenes) encoded into VQ codes."""
    from mmgen.data.pretokenize import _ShapesImages, encode_dataset

    args, s = run.args, time.time()
    codes_dir = run.out / "codes"
    # the codes only feed the t2i stage: a finished t2i model needs none
    reused = args.reuse and ((codes_dir / "meta.json").is_file() or (run.out / "t2i" / "model" / "model_index.json").is_file())
    if not reused:
        items = _ShapesImages(args.n_images, "train", args.seed, vq.config.image_size, p_two_objects=args.two_objects)
        encode_dataset(vq, items, codes_dir, source=items.source, overwrite=True, progress=False)
    grid = vq.config.grid_size
    run.stage_done("codes", s, f"{args.n_images:,} shapes images encoded into {grid}x{grid} codes", reused)


def t2i_stage(run: DemoRun, vq) -> None:
    """3. The text-to-image model on those codes (configs/t2i_shapes.yaml, ``--t2i-override`` on top).

    The recipe scores codes by their factors; when this VQ's codes do not survive the factors'
    merge (check_code_factors), the model gets a table of codes instead.
    """
    args, s = run.args, time.time()
    t2i_dir, codes_dir = run.out / "t2i", run.out / "codes"
    reused = args.reuse and (t2i_dir / "model" / "model_index.json").is_file()
    if not reused:
        shutil.rmtree(t2i_dir, ignore_errors=True)
        overrides = [f"--data.path={codes_dir}", f"--data.vq={run.out / 'vq' / 'model'}", *args.t2i_override]
        codes_check = check_code_factors(vq, codes_dir, overrides)
        if codes_check.get("code_embedding") == "table":
            overrides.append("--model.image_decoder.code_embedding=table")
        run.record["t2i"] = _train(CONFIGS / "t2i_shapes.yaml", t2i_dir, args.t2i_minutes, args.seed, overrides,
                                   processes=args.processes)
        if codes_check:
            run.record["t2i"]["code_factors_check"] = codes_check
    run.stage_done("t2i", s, "text-to-image model trained", reused)


def text_model_stages(run: DemoRun) -> None:
    """4. Small GPT and BERT models on Tiny Shakespeare for the text tabs; each skipped, with a
    message, when the corpus is missing or its minutes are 0."""
    args, corpus = run.args, SHAKESPEARE
    if not corpus.is_file() and args.shakespeare:
        from mmgen.data.text import main as data_text_main

        data_text_main(["--source", "shakespeare", "--from", args.shakespeare])
    for name, config, minutes in (("gpt", "gpt_shakespeare_bpe.yaml", args.gpt_minutes),
                                  ("bert", "bert_shakespeare.yaml", args.bert_minutes)):
        s = time.time()
        if not corpus.is_file():
            print(f"[train-demo] {name:<6} skipped: {corpus} is missing (run `mmgen data text --source shakespeare "
                  f"[--from FILE]` or pass --shakespeare FILE); the bundle will have no {name}/ tab", flush=True)
            continue
        if minutes <= 0:
            print(f"[train-demo] {name:<6} skipped (--{name}-minutes 0)", flush=True)
            continue
        folder = run.out / name
        reused = run.finished(folder)
        if not reused:
            shutil.rmtree(folder, ignore_errors=True)
            quiet = ["--train.eval_batches=8", "--train.sample_every=0"]
            run.record[name] = _train(CONFIGS / config, folder, minutes, args.seed, [f"--data.path={corpus}", *quiet])
        run.stage_done(name, s, f"{name.upper()} trained on {corpus}", reused)


def tune_stage(run: DemoRun):
    """5. The sampling defaults, searched on validation prompts (seed 999, which the final
    evaluation does not use); ``--tune-minutes 0`` keeps the pipeline's, and a reused t2i stage keeps
    the earlier bundle's search. Returns the pipeline and them."""
    from mmgen.pipelines import TextToImagePipeline

    args, s = run.args, time.time()
    pipe = TextToImagePipeline.from_pretrained(run.out / "t2i" / "model")
    defaults = dict(pipe.defaults)
    if "t2i" in run.reused and run.previous_defaults and "sampling_search" in run.previous:
        # the same model as the earlier bundle's: its search holds
        defaults.update(run.previous_defaults)
        run.record["sampling_search"] = run.previous["sampling_search"]
        run.stage_done("tune", s, f"sampling defaults {defaults}", True)
        return pipe, defaults
    trials: list[dict] = []
    if args.tune_minutes > 0:
        best, trials = tune_sampling(pipe, args.tune_n, seed=999, budget_s=args.tune_minutes * 60)
        defaults.update(best)
    run.record["sampling_search"] = {"prompt_seed": 999, "n_per_group": args.tune_n, "trials": trials}
    run.stage_done("tune", s, f"sampling defaults {defaults}")
    return pipe, defaults


def bundle_stage(run: DemoRun, pipe, defaults: dict[str, Any]) -> None:
    """6. The bundle: fp16 weights, the text models beside the text-to-image ones, and the record,
    with the figures of the saved bundle. Built under a temporary name, then renamed into place."""
    import torch

    s = time.time()
    tmp = run.bundle.with_name(f".{run.bundle.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.defaults = defaults
    pipe.model_id = "mmgen-demo-shapes"
    pipe.extras = {}
    for name in ("gpt", "bert"):
        if (run.out / name / "model" / "config.json").is_file():
            _copy_text_model(run.out / name / "model", tmp / name)
    run.record["timings_s"] = run.timings
    run.record["made_by"] = run.made_by
    if run.reused:
        run.record["reused_stages"] = run.reused
    pipe.save_pretrained(tmp, dtype=torch.float16, extra={"training": run.record})
    results = _evaluate_bundle(run, tmp, defaults, s)
    size = _folder_mb(tmp)
    if size > BUNDLE_LIMIT_MB:
        print(f"[train-demo] warning: the bundle is {size:.1f} MB, over the {BUNDLE_LIMIT_MB:.0f} MB limit", file=sys.stderr)
    shutil.rmtree(run.bundle, ignore_errors=True)
    tmp.rename(run.bundle)
    run.stage_done("bundle", s, f"bundle written to {run.bundle} ({size:.1f} MB), exact {results['summary']}")


def _evaluate_bundle(run: DemoRun, folder: Path, defaults: dict[str, Any], started: float) -> dict[str, Any]:
    """``mmgen eval t2i`` on the saved bundle in ``folder``, written into its model_index.json
    with the final timings; returns the results.

    The figures are those of the saved (fp16) bundle, on prompts (seed 1234) the search never saw.
    """
    from mmgen.config import atomic_write_text
    from mmgen.eval.t2i import evaluate_t2i, format_report
    from mmgen.pipelines import TextToImagePipeline

    args = run.args
    shipped = TextToImagePipeline.from_pretrained(folder)
    sampling = {k: v for k, v in defaults.items() if k in ("guidance_scale", "temperature", "top_k", "top_p", "candidates")}
    results = evaluate_t2i(shipped, n_per_group=args.eval_n, seed=1234, contact_sheet=str(run.out / "contact_sheet.png"),
                           progress=False, **sampling)
    print(format_report(results), flush=True)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["eval"] = {"command": "mmgen eval t2i --bundle BUNDLE", "n_per_group": args.eval_n, "prompt_seed": 1234,
                     **{g: r for g, r in results.items()}}
    text = _evaluate_text_models(folder)
    if text:
        index["eval_text"] = text
    index["training"]["timings_s"] = {**run.timings, "bundle_and_eval": round(time.time() - started, 1)}
    index["training"]["total_s"] = round(sum(index["training"]["timings_s"].values()), 1)  # reused stages included
    atomic_write_text(index_path, json.dumps(index, indent=2) + "\n")
    return results


def _evaluate_text_models(folder: Path) -> dict[str, Any]:
    """``mmgen eval text`` on the bundle's gpt/ and bert/ (saved, fp16), on the corpus's held-out tail."""
    from mmgen.eval.text import evaluate_text_model, format_text_report

    out = {}
    for name in ("gpt", "bert"):
        if (folder / name).is_dir() and SHAKESPEARE.is_file():
            report = evaluate_text_model(folder / name, SHAKESPEARE)
            print(format_text_report(report), flush=True)
            report["model"], report["data"] = name, SHAKESPEARE.name
            out[name] = {"command": f"mmgen eval text --model BUNDLE/{name} --data {SHAKESPEARE}", **report}
    return out


def ship_stage(run: DemoRun) -> None:
    """--ship: the bundle becomes the packaged default (mmgen/assets/demo)."""
    from mmgen.pipelines import DEMO_BUNDLE

    shutil.rmtree(DEMO_BUNDLE, ignore_errors=True)
    shutil.copytree(run.bundle, DEMO_BUNDLE)
    _progress("ship", f"copied to {DEMO_BUNDLE}", run.t0)


def done_stage(run: DemoRun) -> None:
    """The last line: the whole run's time."""
    _progress("done", f"total {time.time() - run.t0:.0f} s", run.t0)


# The command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmgen train-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="work folder (stages write sub-folders here)")
    p.add_argument("--bundle", default=None, help="where to write the bundle (default: OUT/bundle)")
    p.add_argument("--ship", action="store_true", help="also copy the bundle to mmgen/assets/demo (the packaged default)")
    p.add_argument("--reuse", action="store_true", help="keep stages an earlier run in OUT finished")
    p.add_argument("--seed", type=int, default=0, help="training and shapes-data seed")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (on a machine shared with other jobs, 1 is several times faster)")
    p.add_argument("--processes", type=int, default=2,
                   help="data-parallel processes for the text-to-image stage (one thread each; 1: in this process)")
    p.add_argument("--vq-minutes", type=float, default=8.0)
    p.add_argument("--n-images", type=int, default=50_000, help="shapes images pretokenized for the t2i stage")
    p.add_argument("--two-objects", type=float, default=TWO_OBJECTS, metavar="P",
                   help="share of those images with two objects (the shapes world draws 0.5; relations are the hard part)")
    p.add_argument("--t2i-minutes", type=float, default=26.0)
    p.add_argument("--t2i-override", action="append", default=[], metavar="--KEY=VALUE",
                   help="extra `mmgen train` override for the t2i stage, e.g. --t2i-override=--model.text_encoder.n_layers=3 "
                        "(repeatable)")
    p.add_argument("--gpt-minutes", type=float, default=15.0)
    p.add_argument("--bert-minutes", type=float, default=15.0)
    p.add_argument("--tune-minutes", type=float, default=4.0, help="budget of the sampling search (0: skip)")
    p.add_argument("--tune-n", type=int, default=60, help="validation prompts per group for the search")
    p.add_argument("--eval-n", type=int, default=50, help="prompts per group for the final evaluation")
    p.add_argument("--shakespeare", default=None, metavar="FILE",
                   help=f"Tiny Shakespeare text to import (`mmgen data text --from`) when {SHAKESPEARE} is missing")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    run = start_run(args, argv)
    if run is None:  # refused before any training
        return 2
    vq = vq_stage(run)
    codes_stage(run, vq)
    t2i_stage(run, vq)
    text_model_stages(run)
    pipe, defaults = tune_stage(run)
    bundle_stage(run, pipe, defaults)
    if args.ship:
        ship_stage(run)
    done_stage(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
