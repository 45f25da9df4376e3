"""Datasets: readers of the field's folder layouts, the synthetic face generator, and subject-independent splits."""

from affectvlm.data.datasets import DatasetError, Sample, index_dataset, load_sample, write_labels
from affectvlm.data.emotions import BASIC_EMOTIONS, EMOTIONS, parse_emotion
from affectvlm.data.splits import Fold, bu3dfe_protocol, sequences, subject_kfold

__all__ = ["BASIC_EMOTIONS", "EMOTIONS", "DatasetError", "Fold", "Sample", "bu3dfe_protocol", "index_dataset",
           "load_sample", "parse_emotion", "sequences", "subject_kfold", "write_labels"]
