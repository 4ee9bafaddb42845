"""Exports: datasets as CSV, JSON, NDJSON or a PDF report, streamed or as stored jobs."""

from __future__ import annotations

from exporter.exports.datasets import DATASETS, ExportSpec
from exporter.exports.formats import FORMATS
from exporter.exports.jobs import ExportJobs, JobSettings, TooManyJobs
from exporter.exports.render import ExportError, Progress, render

__all__ = [
    "DATASETS",
    "FORMATS",
    "ExportError",
    "ExportJobs",
    "ExportSpec",
    "JobSettings",
    "Progress",
    "TooManyJobs",
    "render",
]
