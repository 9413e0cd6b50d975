"""Scores of captions and of retrieval.

    bleu.py       corpus BLEU-1..4 (nltk) on the project's tokenizer
    cider.py      CIDEr-D, as coco-caption computes it
    rouge.py      ROUGE-L, as coco-caption computes it (pure Python)
    meteor.py     METEOR 1.5: the jar pycocoevalcap ships, run with Java (left out when there is no Java)
    report.py     the numbers as people read them: one line per epoch, the final table
    content.py    content accuracy on the built-in scenes: are the shapes, colours and places right?
    repetition.py captions that show a special token or repeat a content word
    retrieval.py  R@K for an image–sentence similarity matrix, next to its chance value

May import: captioner.vocab, captioner.data (content.py reads the built-in scenes' words).
"""
