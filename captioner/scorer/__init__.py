"""The image–sentence scorer (a bidirectional StackedLSTM against the image feature) and its use.

    model.py     ImageSentenceScorer, its ranking loss, its checkpoint
    rerank.py    rerank_generations: reorder a beam's alternatives by log p + w · score
    training.py  its trainer (`python train.py --config configs/scorer.yaml`) and measurements

May import: captioner.checkpoint, captioner.config, captioner.decoding, captioner.devices, captioner.files,
captioner.model, captioner.modes, captioner.vocab, captioner.data, captioner.encoders, captioner.metrics,
captioner.rnn, captioner.training.
"""
