"""Scores of captions and of retrieval.

    bleu.py       corpus BLEU-1..4 (nltk) on the project's tokenizer
    cider.py      CIDEr-D, as coco-caption computes it
    content.py    content accuracy on the built-in scenes: are the shapes, colours and places right?
    retrieval.py  R@K for an image–sentence similarity matrix, next to its chance value

May import: captioner.vocab, captioner.data (content.py reads the built-in scenes' words).
"""
