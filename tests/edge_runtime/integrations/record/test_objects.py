"""The DICOM objects of a capture: what they hold, what they reference, and that nothing about a patient is made up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from edge_runtime.core.protocol import Box, ModelId, Result, ResultStatus, Task
from edge_runtime.integrations.record import PacsTarget, RecordError, Series, SourceStudy, build_objects

MODEL = ModelId("us-seg", "1.2.0", "ab" * 32)


def segmentation(height: int = 60, width: int = 80) -> Result:
    mask = np.zeros((height, width), np.uint8)
    mask[10:30, 20:50] = 1
    mask[40:50, 5:15] = 2
    return Result(0, 17, 1_700_000_000_000_000_000, 0, 0, 0, 0, Task.SEGMENTATION, ResultStatus.OK, MODEL,
                  labels=("background", "lesion", "vessel"), colors=((0, 0, 0), (255, 0, 0), (0, 0, 255)),
                  mask=mask)  # fmt: skip


def frame(height: int = 60, width: int = 80) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_segmentation_gives_the_overlay_the_frame_and_a_seg_with_one_segment_per_class() -> None:
    import highdicom as hd

    image, result = frame(), segmentation()
    overlay, plain, seg = build_objects(image, result, Series.new(None), number=4)
    assert overlay.SOPClassUID == plain.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    np.testing.assert_array_equal(plain.pixel_array, image)
    assert not np.array_equal(overlay.pixel_array, image)  # the overlay is drawn in
    np.testing.assert_array_equal(overlay.pixel_array[0, 0], image[0, 0])  # ...only where the classes are
    for ds in (overlay, plain, seg):
        assert MODEL.sha256 in ds.ImageComments and "us-seg" in ds.ImageComments and "1.2.0" in ds.ImageComments
        assert ds.StudyInstanceUID == overlay.StudyInstanceUID and ds.InstanceNumber == 4
        assert not ds.get("PatientName") and not ds.get("PatientID")  # no source: nothing invented
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion", "vessel"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("us-seg", "1.2.0")
    assert MODEL.sha256 in algorithm.AlgorithmParameters
    assert (
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == plain.SOPInstanceUID
    )
    labelmap = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=[plain.SOPInstanceUID], combine_segments=True, skip_overlap_checks=True
    )[0]
    np.testing.assert_array_equal(labelmap, result.frame_mask())


def test_a_detection_gives_the_overlay_only() -> None:
    result = Result(0, 1, 1_700_000_000_000_000_000, 0, 0, 0, 0, Task.DETECTION, ResultStatus.OK, MODEL,
                    labels=("polyp",), colors=((0, 255, 0),), boxes=(Box(10, 10, 40, 30, 0, 0.9),))  # fmt: skip
    (overlay,) = build_objects(frame(), result, Series.new(None), 1)
    assert overlay.Modality == "OT" and (overlay.Rows, overlay.Columns) == (60, 80)


def _source_file(tmp_path: Path, name: str = "Doe^Jane") -> Path:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = name, "MRN-0042", "F", "19700101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.SOPClassUID, ds.AccessionNumber, ds.StudyDate = UltrasoundMultiFrameImageStorage, "ACC7", "20260101"
    ds.Modality = "US"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_dicom_source_lends_its_study_patient_and_reference(tmp_path: Path) -> None:
    path = _source_file(tmp_path)
    source = SourceStudy.from_file(path)
    objects = build_objects(frame(), segmentation(), Series.new(source), 1, source)
    for ds in objects:
        assert ds.StudyInstanceUID == source.study_instance_uid
        assert (str(ds.PatientName), ds.PatientID, ds.AccessionNumber) == ("Doe^Jane", "MRN-0042", "ACC7")
    overlay = objects[0]
    assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == source.sop_instance_uid
    assert overlay.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_instance_uid
    assert overlay.SeriesInstanceUID != source.series_instance_uid  # our own series in their study


def test_a_one_word_patient_name_is_copied_without_highdicom_quoting_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """As pydicom's own cine names its patient: highdicom warns about the format, quoting the name."""
    import warnings

    source = SourceStudy.from_file(_source_file(tmp_path, "PLAINNAME"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning left would fail here
        objects = build_objects(frame(), segmentation(), Series.new(source), 1, source)
    assert all(str(ds.PatientName) == "PLAINNAME" for ds in objects)
    assert "PLAINNAME" not in capfd.readouterr().err + caplog.text


def test_errors_name_the_problem_without_patient_data(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_bytes(b"not dicom")
    with pytest.raises(RecordError, match="x.dcm: not a DICOM file"):
        SourceStudy.from_file(tmp_path / "x.dcm")
    with pytest.raises(RecordError, match="uint8"):
        build_objects(frame().astype(np.float32), segmentation(), Series.new(None), 1)
    failed = Result(0, 1, 1, 0, 0, 0, 0, Task.SEGMENTATION, ResultStatus.ERROR, MODEL, error="boom")
    with pytest.raises(RecordError, match="inference error"):
        build_objects(frame(), failed, Series.new(None), 1)
    assert PacsTarget.parse("ORTHANC@127.0.0.1:4242") == PacsTarget("127.0.0.1", 4242, "ORTHANC")
    for bad in ("127.0.0.1:4242", "A@h:0", "WAY_TOO_LONG_AE_TITLE@h:1"):
        with pytest.raises(RecordError):
            PacsTarget.parse(bad)


def test_a_capture_that_fails_is_answered_and_counted(tmp_path: Path) -> None:
    from edge_runtime.integrations.record import Recorder, RecordOptions

    recorder = Recorder(RecordOptions(spool=tmp_path / "spool", trigger=None))

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    recorder.capture = disk_full  # type: ignore[method-assign, assignment]
    assert recorder.try_capture() == {"ok": False, "error": "capture failed: OSError"}
    assert recorder.refused == 1 and recorder.captures == 0
