"""Subject-independent folds and the BU-3DFE protocol preset."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affectvlm.data import DatasetError, bu3dfe_protocol, index_dataset, sequences, subject_kfold
from affectvlm.data.datasets import Sample
from affectvlm.data.emotions import BASIC_EMOTIONS, EMOTIONS
from test_datasets import make_bu3dfe


def assert_subject_independent(samples, folds):
    tested = [i for fold in folds for i in fold.test]
    assert sorted(tested) == list(range(len(samples)))  # every sample is tested exactly once
    for fold in folds:
        assert set(fold.train) | set(fold.test) == set(range(len(samples)))
        train_subjects = {samples[i].subject for i in fold.train}
        test_subjects = {samples[i].subject for i in fold.test}
        assert not train_subjects & test_subjects
        assert tuple(sorted(test_subjects)) == fold.test_subjects
    all_test_subjects = [s for fold in folds for s in fold.test_subjects]
    assert len(all_test_subjects) == len(set(all_test_subjects))


@settings(max_examples=50, deadline=None)
@given(labels=st.lists(st.tuples(st.integers(0, 14), st.sampled_from(EMOTIONS)), min_size=4, max_size=120),
       folds=st.integers(2, 10), seed=st.integers(0, 2**32 - 1))
def test_no_subject_is_in_two_folds(labels, folds, seed):
    samples = [Sample(f"{i}.obj", f"s{subject}", emotion) for i, (subject, emotion) in enumerate(labels)]
    subject_count = len({s.subject for s in samples})
    if folds > subject_count:
        with pytest.raises(ValueError, match="folds need between 2 and"):
            subject_kfold(samples, folds, seed)
        return
    result = subject_kfold(samples, folds, seed)
    assert len(result) == folds and all(fold.test for fold in result)
    assert_subject_independent(samples, result)


def balanced_samples(subjects=30):
    return [Sample(f"{s}_{e}_{level}.obj", f"s{s:02d}", e, level)
            for s in range(subjects) for e in BASIC_EMOTIONS for level in (1, 2)]


def test_folds_are_stratified_and_seeded():
    samples = balanced_samples()
    folds = subject_kfold(samples, 5, seed=3)
    for fold in folds:
        counts = Counter(samples[i].emotion for i in fold.test)
        assert set(counts.values()) == {len(fold.test_subjects) * 2}
        assert len(fold.test_subjects) == 6
    assert folds == subject_kfold(samples, 5, seed=3)
    assert folds != subject_kfold(samples, 5, seed=4)


def test_uneven_subjects_keep_emotions_balanced():
    # Half the subjects only ever show happiness, the others only sadness: each fold must get some of both.
    samples = [Sample(f"{s}_{k}.obj", f"s{s}", "happiness" if s % 2 else "sadness") for s in range(20) for k in range(3)]
    for fold in subject_kfold(samples, 5, seed=0):
        counts = Counter(samples[i].emotion for i in fold.test)
        assert counts["happiness"] == counts["sadness"] == 6


def test_4d_frames_count_once_per_sequence():
    # Subject s0 has one 100-frame sequence; weighing frames would push it alone against all the others.
    samples = [Sample(f"s0/{f}.obj", "s0", "happiness", sequence="s0/happy", frame=f) for f in range(100)]
    for s in range(1, 8):
        samples += [Sample(f"s{s}/{f}.obj", f"s{s}", "happiness", sequence=f"s{s}/happy", frame=f) for f in range(3)]
    folds = subject_kfold(samples, 4, seed=0)
    assert_subject_independent(samples, folds)
    assert sorted(len(fold.test_subjects) for fold in folds) == [2, 2, 2, 2]
    grouped = sequences(samples)
    assert len(grouped) == 8 and [s.frame for s in grouped["s0/happy"]] == list(range(100))


def test_bu3dfe_protocol_reproduces_the_published_counts(tmp_path):
    subjects = [f"F{n:04d}" for n in range(1, 57)] + [f"M{n:04d}" for n in range(1, 45)]  # 56 female, 44 male
    make_bu3dfe(tmp_path, subjects)
    everything = index_dataset(tmp_path)
    assert len(everything) == 100 * 25

    samples, folds = bu3dfe_protocol(everything)
    assert len(samples) == 60 * 6 * 2 == 720
    assert {s.subject for s in samples} == set(sorted(subjects)[:60])  # the first 60 by default
    assert {s.intensity for s in samples} == {3, 4} and {s.emotion for s in samples} == set(BASIC_EMOTIONS)
    assert len(folds) == 10
    for fold in folds:
        assert len(fold.test_subjects) == 6 and len(fold.test) == 72 and len(fold.train) == 648
        assert set(Counter(samples[i].emotion for i in fold.test).values()) == {12}
    assert_subject_independent(samples, folds)

    seeded, _ = bu3dfe_protocol(everything, seed=1)
    seeded_subjects = {s.subject for s in seeded}
    assert len(seeded_subjects) == 60 and seeded_subjects != set(sorted(subjects)[:60])
    assert seeded_subjects == {s.subject for s in bu3dfe_protocol(everything, seed=1)[0]}

    chosen = subjects[40:100]
    picked, _ = bu3dfe_protocol(everything, subjects=chosen)
    assert {s.subject for s in picked} == set(chosen)


def test_bu3dfe_protocol_rejects_what_it_cannot_honour(tmp_path):
    make_bu3dfe(tmp_path, [f"F{n:04d}" for n in range(1, 61)])
    everything = index_dataset(tmp_path)
    with pytest.raises(DatasetError, match="needs 60 distinct subjects present in the data; got 2"):
        bu3dfe_protocol(everything, subjects=["F0001", "F0002"])
    with pytest.raises(DatasetError, match="absent: M0099"):
        bu3dfe_protocol(everything, subjects=[f"F{n:04d}" for n in range(1, 60)] + ["M0099"])
    with pytest.raises(DatasetError, match="needs 60 subjects with level 3-4 expressions; found 59"):
        bu3dfe_protocol([s for s in everything if s.subject != "F0060"])
    with pytest.raises(DatasetError, match="expects 720 scans"):
        bu3dfe_protocol([s for s in everything if s.path.name != "F0007_SU04WH_F3D.wrl"])
