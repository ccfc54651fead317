"""Analyses of segmentations, shells, statistics and explanation quality."""
