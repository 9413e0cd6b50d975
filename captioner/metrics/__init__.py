"""Scores of captions and of retrieval.

    bleu.py       corpus BLEU-1..4 (nltk) on the project's tokenizer
    cider.py      CIDEr-D, as coco-caption computes it
    content.py    content accuracy on the built-in scenes: are the shapes, colours and places right?
    repetition.py captions that show a special token or repeat a content word
    retrieval.py  R@K for an image–sentence similarity matrix, next to its chance value

May import: captioner.vocab, captioner.data (content.py reads the built-in scenes' words).
"""
