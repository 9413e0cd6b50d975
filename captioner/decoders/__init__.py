"""Decoders: from the image features to word probabilities, each around the same StackedLSTM.

    show_and_tell.py  the image as the first input (Vinyals et al. 2015) or as the initial state
    attention.py      soft attention over image regions, queried by h_{t-1} (Xu et al. 2015) or h_t (Lu et al. 2017)

Every decoder has `forward(features, tokens, repeats)` (teacher forcing), `start(features)` and
`step(tokens, state)` (for beam search and sampling).

May import: captioner.config, captioner.rnn.
"""
