"""Seed experiments that check the chapter's claims with this project's own code.

    python -m captioner.experiments cells [--quick]       every cell type on the shapes data (cells.py)
    python -m captioner.experiments gradients [--quick]   ∂loss/∂h_t against distance, clipping, TBPTT (gradients.py)

tbptt.py holds truncated backpropagation through time for StackedLSTM; plotting.py the figures.

May import: captioner.config, captioner.data, captioner.files, captioner.rnn, captioner.training.
"""
