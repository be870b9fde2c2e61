"""The bottom layer: annotation rows, samples, class lists, annotation-format readers and the demo generator.

Nothing here imports another vau package except :mod:`vau.registry` (docs/architecture.md, "Layers").
"""

from vau.data.annotations import ANOMALY_CLASSES, LETTERS, NORMAL, Annotation, AnnotationError
from vau.data.readers import read_rows
from vau.data.sample import DEFAULT_VIEWS, Sample, ViewOptions

__all__ = ["ANOMALY_CLASSES", "DEFAULT_VIEWS", "LETTERS", "NORMAL", "Annotation", "AnnotationError", "Sample",
           "ViewOptions", "read_rows"]
