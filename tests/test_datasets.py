"""Indexing dataset folders that the tests lay out with the datasets' own names (files are empty: indexing
reads names, not meshes)."""

import pytest

from affectvlm.data import DatasetError, index_dataset, parse_emotion, write_labels
from affectvlm.data.datasets import Sample, index_bosphorus, index_bu3dfe

BU3DFE_CODES = {"AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness", "SA": "sadness", "SU": "surprise"}


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_bu3dfe(root, subjects):
    """Every scan of BU-3DFE for the given subjects, e.g. ["F0001", "M0002"]: neutral + 6 x 4 intensities."""
    for subject in subjects:
        touch(root / subject / f"{subject}_NE00WH_F3D.wrl")
        touch(root / subject / f"{subject}_NE00WH_RAW.wrl")
        touch(root / subject / f"{subject}_NE00WH_F2D.bmp")
        for code in BU3DFE_CODES:
            for level in range(1, 5):
                touch(root / subject / f"{subject}_{code}{level:02d}WH_F3D.wrl")


def test_bu3dfe_names_give_subject_emotion_intensity_and_attributes(tmp_path):
    make_bu3dfe(tmp_path, ["F0001", "M0002"])
    samples = index_dataset(tmp_path)
    assert len(samples) == 2 * 25
    happy = next(s for s in samples if s.path.name == "M0002_HA03WH_F3D.wrl")
    assert (happy.subject, happy.emotion, happy.intensity) == ("M0002", "happiness", 3)
    assert happy.attributes == {"sex": "male", "race": "WH", "scan": "F3D"}
    assert sum(s.emotion == "neutral" and s.intensity == 0 for s in samples) == 2
    assert len(index_bu3dfe(tmp_path, scan="RAW")) == 2


def test_bu3dfe_impossible_intensity_is_named(tmp_path):
    make_bu3dfe(tmp_path, ["F0001"])
    bad = touch(tmp_path / "F0001" / "F0001_HA00WH_F3D.wrl")
    with pytest.raises(DatasetError, match=f"{bad}: intensity 00 is impossible for happiness"):
        index_dataset(tmp_path, "bu3dfe")


def test_bu4dfe_folders_give_sequences_of_frames(tmp_path):
    for subject in ["F001", "M002"]:
        for emotion in ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise"]:
            for frame in range(3):
                touch(tmp_path / subject / emotion / f"{frame:03d}.wrl")
    samples = index_dataset(tmp_path)
    assert len(samples) == 2 * 6 * 3
    sad = [s for s in samples if s.sequence == "M002/Sad"]
    assert [s.frame for s in sad] == [0, 1, 2]
    assert all(s.subject == "M002" and s.emotion == "sadness" and s.attributes["sex"] == "male" for s in sad)


def test_bosphorus_labels_emotion_scans_only(tmp_path):
    names = ["bs001_E_HAPPY_0.bnt", "bs001_E_SADNESS_0.bnt", "bs001_N_N_0.bnt", "bs001_LFAU_12_0.bnt",
             "bs002_YR_R10_0.bnt", "bs002_O_EYE_0.bnt", "bs002_E_SURPRISE_0.bnt", "bs002_E_SURPRISE_0.png"]
    for name in names:
        touch(tmp_path / name)
    samples = {s.path.name: s for s in index_dataset(tmp_path)}
    assert len(samples) == 7
    assert samples["bs001_E_HAPPY_0.bnt"].emotion == "happiness"
    assert samples["bs002_E_SURPRISE_0.bnt"].subject == "bs002"
    assert samples["bs001_N_N_0.bnt"].emotion == "neutral"
    for unlabelled in ["bs001_LFAU_12_0.bnt", "bs002_YR_R10_0.bnt", "bs002_O_EYE_0.bnt"]:
        assert samples[unlabelled].emotion is None
    assert samples["bs001_LFAU_12_0.bnt"].attributes == {"kind": "LFAU", "code": "12", "take": 0}


def test_bosphorus_unknown_expression_is_named(tmp_path):
    bad = touch(tmp_path / "bs001_E_BORED_0.bnt")
    with pytest.raises(DatasetError, match=f"{bad}: unknown emotion 'BORED'"):
        index_bosphorus(tmp_path)


def test_labels_csv_folder(tmp_path):
    for name in ["a.obj", "b.ply", "seq/000.wrl", "seq/001.wrl"]:
        touch(tmp_path / name)
    (tmp_path / "labels.csv").write_text(
        "file,subject,emotion,intensity,sex,age,sequence,frame\n"
        "a.obj,s1,Happy,2,female,31,,\n"
        "b.ply,s2,AN,,male,,,\n"
        "seq/000.wrl,s3,surprised,4,,,s3-surprise,0\n"
        "seq/001.wrl,s3,,,,,s3-surprise,1\n")
    samples = index_dataset(tmp_path)
    assert [(s.subject, s.emotion, s.intensity) for s in samples] == [
        ("s1", "happiness", 2), ("s2", "anger", None), ("s3", "surprise", 4), ("s3", None, None)]
    assert samples[0].attributes == {"sex": "female", "age": "31"}
    assert (samples[3].sequence, samples[3].frame) == ("s3-surprise", 1)


@pytest.mark.parametrize("content, reason", [
    ("file,subject\na.obj,s1\n", "missing column"),
    ("file,subject,emotion\n", "no rows"),
    ("file,subject,emotion\nmissing.obj,s1,happy\n", "line 2: mesh file 'missing.obj' not found"),
    ("file,subject,emotion\na.obj,s1,happy\na.obj,s1,bored\n", "line 3: unknown emotion 'bored'"),
    ("file,subject,emotion\na.obj,,happy\n", "line 2: empty subject"),
    ("file,subject,emotion,intensity\na.obj,s1,happy,high\n", "line 2: invalid literal"),
    ("file,subject,emotion\na.obj,s1\n", "line 2: wrong number of fields"),
    ("file,subject,emotion\nnotes.txt,s1,happy\n", "not a readable mesh format"),
])
def test_bad_labels_csv_names_the_line(tmp_path, content, reason):
    touch(tmp_path / "a.obj")
    touch(tmp_path / "notes.txt")
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(DatasetError, match=reason) as raised:
        index_dataset(tmp_path)
    assert str(raised.value).startswith(str(tmp_path / "labels.csv"))


def test_labels_csv_saved_by_a_spreadsheet_with_a_byte_order_mark(tmp_path):
    touch(tmp_path / "a.obj")
    (tmp_path / "labels.csv").write_bytes("file,subject,emotion\r\na.obj,s1,sad\r\n".encode("utf-8-sig"))
    assert [(s.subject, s.emotion) for s in index_dataset(tmp_path)] == [("s1", "sadness")]


def test_labels_written_are_read_back(tmp_path):
    samples = [Sample(touch(tmp_path / "s1" / "happiness_4.obj"), "s1", "happiness", 4,
                      attributes={"sex": "female", "age": 25}),
               Sample(touch(tmp_path / "s1" / "fear" / "003.obj"), "s1", "fear", 4, "s1/fear", 3)]
    labels = write_labels(tmp_path, samples)
    assert labels.read_text().splitlines()[0] == "file,subject,emotion,intensity,sex,age,sequence,frame"
    again = index_dataset(tmp_path)
    assert [(s.path, s.subject, s.emotion, s.intensity, s.sequence, s.frame) for s in again] == \
           [(s.path, s.subject, s.emotion, s.intensity, s.sequence, s.frame) for s in samples]


def test_undetectable_folder_and_unknown_layout(tmp_path):
    touch(tmp_path / "scan.obj")
    with pytest.raises(DatasetError, match="no labels.csv"):
        index_dataset(tmp_path)
    with pytest.raises(DatasetError, match="unknown layout 'bu5dfe'"):
        index_dataset(tmp_path, "bu5dfe")
    with pytest.raises(DatasetError, match="not a folder"):
        index_dataset(tmp_path / "scan.obj")
    with pytest.raises(DatasetError, match="no BU-3DFE scans"):
        index_dataset(tmp_path, "bu3dfe")


@pytest.mark.parametrize("text, emotion", [("AN", "anger"), ("Angry", "anger"), ("happy", "happiness"),
                                           ("SADNESS", "sadness"), (" surprised ", "surprise"), ("NE", "neutral"),
                                           ("Disgust", "disgust"), ("fearful", "fear")])
def test_emotion_synonyms_and_codes(text, emotion):
    assert parse_emotion(text) == emotion


def test_unknown_emotion_word():
    with pytest.raises(ValueError, match="unknown emotion 'contempt'"):
        parse_emotion("contempt")
