"""``mmgen train`` / ``accelerate launch scripts/train.py``: run an experiment YAML.

    mmgen train --config configs/gpt_shakespeare_char.yaml [--resume latest|PATH] [--train.lr=3e-4 ...]
    accelerate launch scripts/train.py --config configs/gpt_shakespeare_char.yaml ...

Every ``--section.key=value`` overrides the YAML (YAML scalar typing); an unknown key is an
error naming it. ``--print-config`` shows the resolved experiment and exits.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from mmgen.checkpoint import CheckpointError
from mmgen.config import ConfigError

__all__ = ["main", "run"]


def run(config_path: Optional[str], overrides: Sequence[str] = (), resume: Optional[str] = None) -> dict:
    """Build the experiment's data and model and train it; returns the run summary."""
    from accelerate.utils import set_seed

    from mmgen.training.config import load_experiment
    from mmgen.training.registry import get_kind
    from mmgen.training.trainer import Trainer, make_accelerator

    experiment = load_experiment(config_path, overrides)
    kind = get_kind(experiment.kind)
    accelerator = make_accelerator(experiment.train)
    with accelerator.main_process_first():  # the main process tokenizes and caches; the others read the cache
        data = kind.build_data(experiment.data, experiment.model, experiment.train.seed)
    experiment = complete_model_config(experiment, data)
    set_seed(experiment.train.seed)  # the same initial weights on every process
    model = kind.build_model(experiment.model)
    if data.prepare_model is not None:
        data.prepare_model(model)
    set_seed(experiment.train.seed + accelerator.process_index)  # but different dropout per process
    trainer = Trainer(model, data, experiment.train, accelerator=accelerator, experiment=experiment)
    return trainer.fit(resume=resume)


def complete_model_config(experiment, data):
    """Fill the model fields the YAML left to the data (vocab_size), and check the ones it set."""
    from mmgen.training.config import ExperimentConfig

    model = experiment.model
    filled = {k: v for k, v in data.model_fields.items() if k in experiment.from_data}
    if filled:
        model = model.replace(**filled)
    need = data.model_fields.get("vocab_size")
    if need is not None and "vocab_size" not in filled and model.vocab_size < need:
        raise ConfigError(
            f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's vocabulary ({need} tokens); "
            f"set it to at least {need}, or leave it out to use the tokenizer's size"
        )
    return ExperimentConfig(kind=experiment.kind, model=model, data=experiment.data, train=experiment.train)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmgen train",
        description="Train a model from an experiment YAML (model.kind selects GPT, BERT, ...).",
        epilog="Overrides: --section.key=value, e.g. --train.lr=3e-4 --model.n_layers=4 --data.path=my.txt",
    )
    parser.add_argument("--config", help="experiment YAML (configs/*.yaml)")
    parser.add_argument("--resume", metavar="latest|PATH",
                        help="continue from the newest checkpoint of train.output_dir, or from a checkpoint folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved experiment and exit")
    args, rest = parser.parse_known_args(argv)
    if args.config is None and not rest:
        parser.error("give --config FILE (and optional --section.key=value overrides)")
    try:
        if args.print_config:
            from mmgen.training.config import load_experiment

            print(load_experiment(args.config, rest).to_yaml(), end="")
            return 0
        run(args.config, rest, resume=args.resume)
    except (ConfigError, FileNotFoundError, CheckpointError) as e:  # bad config, missing data or checkpoint: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from mmgen.data.text import TextDataError
        from mmgen.training.trainer import TrainingDiverged

        if not isinstance(e, (TextDataError, TrainingDiverged)):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
