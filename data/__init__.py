"""Data: tokenizer, transforms, shard/csv/datasets sources and the resumable loader (see data/README.md).

Entry points: `data.config.DataConfig`, `data.loader.build_train_loader`, `data.loader.build_eval_loader`,
`data.transforms.train_transform` / `eval_transform`, `data.tokenizer.get_tokenizer`.
"""
