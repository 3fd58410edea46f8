"""Offline data preparation: text corpora -> WordPiece vocabulary -> tokenized WebDataset shards."""
