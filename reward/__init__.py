"""R1-AQA's rule rewards (answer-tag format and accuracy, `rewards.py`), MMAU's metric (`mmau.py`)
and the caption metrics (CIDEr-D, BLEU, ROUGE-L: `captions.py`), scored without a model.
May import nothing of the project: the standard library only (plus the pure-Python `math-verify`,
loaded by the r1aqa rule when it first runs)."""
