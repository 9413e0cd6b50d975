"""Training: the loop and everything it needs.

    trainer.py        Trainer: teacher forcing, clipping, schedule, validation, checkpoints, resume, test
    setup.py          the run directory, device, seeds, optimizer, schedule, signals, bf16 autocast
    inputs.py         what the model reads per split: cached features of a frozen encoder, or pixels
    init_from.py      fine-tuning (train.init_from): the initial model's config, words and weights, new words added
    self_critical.py  self-critical sequence training with a CIDEr-D reward (Rennie et al. 2017)
    distributed.py    torchrun/DDP helpers: ranks, sharded evaluation, synchronised stops
    tensorboard.py    optional TensorBoard logging (train.tensorboard): losses, learning rate, validation

May import: captioner.checkpoint, captioner.config, captioner.decoding, captioner.devices, captioner.files,
captioner.encoders, captioner.evaluation, captioner.model, captioner.release, captioner.vocab, captioner.data,
captioner.metrics. Never gradio.
"""
