"""Calibration data: frame sources (DICOM, synthetic), the shared preprocessing path, and (later) calibrators."""
