"""Activation collection: stream a subject model over text and keep, per feature, the exemplars
the later stages need (`stage.collect`, the orchestration; `mining`, `intervals`, `negatives`, the
bounded streaming state; `splits`, the split rule; `finalize` and `outputs`, the store's tables)."""

from neuroscribe.distill.collect.stage import CollectConfig, EmptyDatasetError, collect

__all__ = ["CollectConfig", "EmptyDatasetError", "collect"]
