"""Writers of test data in the real on-disk formats, shared by tests/ and benchmarks/ (no download, no tests/ needed).

dataset_replicas.py: tiny (or full-size) replicas of every on-disk catalog set in its real folder layout and file
encodings. weights_layout.py: state dicts with every key, shape and dtype of torchvision's published checkpoints
(from the ``weights-layout/*.tsv`` listings beside it).
"""
