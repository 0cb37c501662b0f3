"""Stage one: frozen-encoder feature extraction into the Zarr cache (``iim extract``)."""
from .run import extract, extract_split, plan_splits

__all__ = ["extract", "extract_split", "plan_splits"]
