"""Calibration data: sources, input binding, arrays, images, sampling."""
