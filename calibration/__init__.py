"""Calibration data: frame sources (DICOM, images, video, arrays, synthetic) and their sampling, the shared
preprocessing path, the histogram calibrators, and TensorRT calibration caches."""
