"""The DICOM objects of one capture: Secondary Capture images and, for segmentation, a DICOM SEG (highdicom).

For every capture: a Secondary Capture of the frame with its overlay drawn in (what the surgeon saw). For a
segmentation result also: a Secondary Capture of the plain frame, and a SEG object on it with one segment per class
(the mask at the frame's resolution), so a PACS viewer can show the segmentation over the image it belongs to.

Patient and study data are never invented. When the frames came from a DICOM file (`SourceStudy.from_file`), the
objects join that study, copy its patient and study attributes as they are, and reference the source instance;
otherwise the patient attributes stay empty (the type 2 attributes DICOM requires, with no value) in a new study.
Every object states the model's name, version and sha256: the SC in Derivation Description and Image Comments,
the SEG in its Algorithm Identification (the sha256 as a parameter).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from edge_runtime import __version__
from edge_runtime.core.errors import EdgertError
from edge_runtime.core.protocol import ModelId, Result, ResultStatus, Task
from edge_runtime.sdk.overlay import draw_overlay

log = logging.getLogger("edgert.record")
_SAID: set[tuple[str, int]] = set()  # highdicom warnings already said, by where they come from


@contextlib.contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """highdicom's warnings, turned into what the user needs. Its person-name check quotes the source's Patient's
    Name (patient data: never printed) about a name format we copy as the modality wrote it, so it says nothing to
    act on; any other warning becomes one line per kind, without its text (which may quote the source too)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if "person name" in str(w.message):
            continue
        where = (Path(w.filename).name, w.lineno)
        if where not in _SAID:
            _SAID.add(where)
            log.info("highdicom warned (%s at %s:%d) while building a record; it was written", w.category.__name__,
                     *where)  # fmt: skip


MANUFACTURER = "edgert"
_PATIENT_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
_STUDY_KEYWORDS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")


class RecordError(EdgertError, ValueError):
    pass


@dataclass(frozen=True)
class SourceStudy:
    """What a DICOM source lends the records: its study, its patient and study attributes as written, and the
    instance the frames came from. Read from the file's header only."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    attributes: dict[str, Any] = field(default_factory=dict)  # patient and study attributes, copied as they are

    @classmethod
    def from_file(cls, path: str | Path) -> SourceStudy:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID)
        except (OSError, InvalidDicomError, AttributeError) as exc:
            # the message names the file and what is missing, never a value from it
            raise RecordError(
                f"{path}: not a DICOM file with study, series and instance UIDs ({exc.__class__.__name__})"
            ) from None
        attributes = {k: ds[k].value for k in (*_PATIENT_KEYWORDS, *_STUDY_KEYWORDS) if k in ds}
        study, series, sop_class, sop_instance = (str(u) for u in uids)
        return cls(study, series, sop_class, sop_instance, attributes=attributes)


@dataclass(frozen=True)
class Series:
    """The recorder's series, made once per session: captures are instances in them."""

    study_instance_uid: str
    overlay_uid: str = field(default_factory=generate_uid)
    frame_uid: str = field(default_factory=generate_uid)
    seg_uid: str = field(default_factory=generate_uid)

    @classmethod
    def new(cls, source: SourceStudy | None) -> Series:
        return cls(source.study_instance_uid if source else generate_uid())


def provenance(model: ModelId) -> str:
    return f"edgert {__version__}: model {model.name} version {model.version} sha256 {model.sha256}"


def build_objects(
    frame_rgb: np.ndarray, result: Result, series: Series, number: int, source: SourceStudy | None = None
) -> list[Dataset]:
    """The objects of one capture (see the module's docstring); `frame_rgb` is (H, W, 3) uint8 in the result's
    geometry, `number` the capture's instance number in the session's series."""
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise RecordError(f"a capture needs an (H, W, 3) uint8 image, got {frame_rgb.shape} {frame_rgb.dtype}")
    if result.status is not ResultStatus.OK:
        raise RecordError("the result is an inference error: nothing to record")
    captured = datetime.fromtimestamp(result.capture_ts_ns / 1e9, tz=timezone.utc)
    overlay = draw_overlay(frame_rgb, result)
    with _quiet_highdicom():
        objects = [_secondary_capture(overlay, result.model, series, series.overlay_uid, 1, number, captured, source,
                                      "frame with the model's overlay drawn in")]  # fmt: skip
        if result.task is Task.SEGMENTATION and result.mask is not None:
            plain = _secondary_capture(frame_rgb, result.model, series, series.frame_uid, 2, number, captured,
                                       source, "frame as captured, source of the segmentation")  # fmt: skip
            objects += [plain, _segmentation(plain, result, series, number)]
    return objects


def _secondary_capture(
    pixels: np.ndarray,
    model: ModelId,
    series: Series,
    series_uid: str,
    series_number: int,
    number: int,
    captured: datetime,
    source: SourceStudy | None,
    what: str,
) -> Dataset:
    import highdicom as hd

    attributes = source.attributes if source else {}
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(pixels),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # unknown for a video frame; required with the PATIENT system
        patient_id=attributes.get("PatientID"),
        patient_name=attributes.get("PatientName"),
        patient_birth_date=attributes.get("PatientBirthDate"),
        patient_sex=attributes.get("PatientSex") or None,
        accession_number=attributes.get("AccessionNumber"),
        study_id=attributes.get("StudyID"),
        study_date=attributes.get("StudyDate"),
        study_time=attributes.get("StudyTime"),
        referring_physician_name=attributes.get("ReferringPhysicianName"),
    )
    if "IssuerOfPatientID" in attributes:
        sc.IssuerOfPatientID = attributes["IssuerOfPatientID"]
    sc.SeriesDescription = f"edgert {what}"
    sc.SoftwareVersions = f"edgert {__version__}"
    sc.DerivationDescription = provenance(model)[:1024]
    sc.ImageComments = provenance(model)[:10240]
    sc.BurnedInAnnotation = "NO"  # the overlay carries no text that identifies anyone
    sc.ContentDate = captured.strftime("%Y%m%d")  # type: ignore[assignment]  # pydicom converts text to DA
    sc.ContentTime = captured.strftime("%H%M%S.%f")  # type: ignore[assignment]  # and to TM
    sc.TimezoneOffsetFromUTC = "+0000"
    if source is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = source.sop_class_uid
        ref.ReferencedSOPInstanceUID = source.sop_instance_uid
        sc.SourceImageSequence = [ref]
        series_ref = Dataset()
        series_ref.SeriesInstanceUID = source.series_instance_uid
        series_ref.ReferencedInstanceSequence = [ref]
        sc.ReferencedSeriesSequence = [series_ref]
    return sc


def _segmentation(source_image: Dataset, result: Result, series: Series, number: int) -> Dataset:
    import highdicom as hd

    assert result.mask is not None
    model = result.model
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name, family=codes.DCM.ArtificialIntelligence, version=model.version,
        source=f"edgert {__version__}", parameters={"sha256": model.sha256},
    )  # fmt: skip
    # one segment per class but the background (class 0), numbered as the class ids: the mask is the label map
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=class_id,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for class_id, name in enumerate(result.labels)
        if class_id > 0
    ]
    if not descriptions:
        raise RecordError("a segmentation result needs at least one class besides the background")
    seg = hd.seg.Segmentation(
        source_images=[source_image],
        pixel_array=np.ascontiguousarray(result.frame_mask()),  # the source image's pixels, one to one
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series.seg_uid,
        series_number=3,
        sop_instance_uid=generate_uid(),
        instance_number=number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="edgert",
        software_versions=f"edgert {__version__}",
        device_serial_number="unknown",
        series_description=f"edgert segmentation: {model.name} {model.version}"[:64],
    )
    seg.ImageComments = provenance(model)[:10240]
    return seg
