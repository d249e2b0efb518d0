"""The scene model at run time (numpy + any runner): data sets and splits, the tokenizer, decoding,
explanation metrics. Training lives in ``edge.zoo.scene``; nothing here imports torch."""
