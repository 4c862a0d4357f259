"""Data: tokenizer, transforms, shard/csv/datasets sources and the resumable loader."""
