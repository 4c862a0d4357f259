"""Checkpoints: writing (files), the parts map (parts), compatibility on resume (compat), consolidation, and
the Checkpointer that owns meta, `latest`, the resume policy and pruning (checkpointer)."""
