"""`edgert record`: captures of the live frame and its result as DICOM (Secondary Capture, and SEG for
segmentation) sent to a PACS with C-STORE through a local spool. Needs `highdicom` and `pynetdicom` (the `pacs`
extra), imported only when objects are built or sent.

`objects` builds the DICOM objects, `pacs` spools and sends them, `recorder` subscribes to the daemon (through
`edge_runtime.integrations.view.feed`, the ZeroMQ side of the view) and answers capture triggers.
"""

from edge_runtime.integrations.record.objects import RecordError, Series, SourceStudy, build_objects
from edge_runtime.integrations.record.pacs import PacsSender, PacsTarget, Spool, SpoolBudget
from edge_runtime.integrations.record.recorder import Captured, Recorder, RecordOptions, request_capture

__all__ = [
    "Captured",
    "PacsSender",
    "PacsTarget",
    "RecordError",
    "RecordOptions",
    "Recorder",
    "Series",
    "SourceStudy",
    "Spool",
    "SpoolBudget",
    "build_objects",
    "request_capture",
]
