"""Training: one Accelerate trainer for every model kind.

* ``config``      ExperimentConfig (model / data / train sections), YAML loading, ``--key=value`` overrides
* ``registry``    model kinds: ``model.kind`` -> config classes, model builder, data builder
* ``trainer``     Trainer, TrainingData, TrainingDiverged
* ``optim``       AdamW groups (decay on >= 2-D weights) and the warmup + cosine schedule
* ``ema``         exponential moving average of the weights
* ``sampler``     the deterministic, sharded, resumable order of samples
* ``checkpoints`` atomic checkpoint folders, ``latest``, the total limit
* ``metrics``     metrics.csv and TensorBoard
* ``cli``         ``mmgen train`` / ``scripts/train.py``
"""
