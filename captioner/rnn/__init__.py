"""The recurrent networks of the chapter, written out: the part a student reads first.

    cells.py    the five cells as equations (rnn, lstm, peephole, coupled, gru), one line each
    stacked.py  StackedLSTM: the cells stacked in layers (and directions), with nn.LSTM's interface
    fused.py    the LSTM's backward pass derived by hand, for speed; the oracle tests hold it to cells.py
    gemm.py     the joined matrix products fused.py runs

May import: nothing from captioner (torch only).
"""
