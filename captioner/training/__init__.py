"""Training: the loop and everything it needs.

    trainer.py        Trainer: teacher forcing, clipping, schedule, validation, checkpoints, resume, test
    progress.py       Progress, the trainer's state saved in checkpoints; what a resume reads back
    run_dir.py        the run directory: proved writable, refused when taken, locked while training
    optimizer.py      Adam(W) over parameter groups, warm-up + cosine schedule, bf16 autocast
    randomness.py     seeds and the RNG snapshots a checkpoint carries
    stops.py          graceful stops on SIGINT/SIGTERM and non-finite losses
    inputs.py         what the model reads per split: cached features of a frozen encoder, or pixels
    init_from.py      fine-tuning (train.init_from): the initial model's config, words and weights, new words added
    self_critical.py  self-critical sequence training with a CIDEr-D reward (Rennie et al. 2017)
    tensorboard.py    optional TensorBoard logging (train.tensorboard): losses, learning rate, validation

May import: captioner.checkpoint, captioner.config, captioner.decoding, captioner.devices,
captioner.distributed, captioner.files, captioner.encoders, captioner.evaluation, captioner.model,
captioner.release, captioner.vocab, captioner.data, captioner.metrics. Never gradio.
"""
