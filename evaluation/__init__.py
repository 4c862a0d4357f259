"""Evaluation: zero-shot classification and image-text retrieval, single-process or sharded over ranks."""

from __future__ import annotations

from evaluation.prompts import (
    FASHION_MNIST_CLASSNAMES,
    FASHION_MNIST_TEMPLATES,
    GENERIC_TEMPLATES,
    Template,
    get_classnames,
    get_templates,
    render,
)
from evaluation.report import flatten_results, format_table, write_json
from evaluation.retrieval import RetrievalFeatures, encode_retrieval_set, evaluate_retrieval, retrieval_metrics
from evaluation.zeroshot import build_zeroshot_classifier, evaluate_zeroshot, zeroshot_accuracy

__all__ = [
    "FASHION_MNIST_CLASSNAMES",
    "FASHION_MNIST_TEMPLATES",
    "GENERIC_TEMPLATES",
    "RetrievalFeatures",
    "Template",
    "build_zeroshot_classifier",
    "encode_retrieval_set",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "flatten_results",
    "format_table",
    "get_classnames",
    "get_templates",
    "render",
    "retrieval_metrics",
    "write_json",
    "zeroshot_accuracy",
]
