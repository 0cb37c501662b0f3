"""The feature cache: what stage one writes and every later stage reads.

    <cache>/manifest.json        model, weights, image size, feature version, benchmark, classnames, ...
    <cache>/zarr.json            the root Zarr (v3) group
    <cache>/<split>/             one Zarr group per split: train_shots{K}_seed{S}[_views{V}], test, ood_{name}
        global  float16 [N, V, D]       CLIP image embedding, unnormalised
        local   float16 [N, V, HW, D]   MaskCLIP value-path patch features, unnormalised
        label   int64   [N]             class index, -1 for OOD
        path    string  [N]             image path relative to the split's source folder
        attrs:  complete, rows_written, kind, views, source, skipped, ...

Reading:

    cache = open_cache("cache/imagenet")        # or any fsspec URL: "s3://bucket/imagenet" (.location)
    test = cache.split("test")                   # refuses a missing or incomplete split
    for chunk in test.iter_chunks(rows=512):     # bounded memory
        chunk.global_feats, chunk.local_feats, chunk.labels

Modules: store.py (the folder, its manifest, open_cache / create_cache), split.py (reading a split),
writer.py (writing one, resumable, per rank), damage.py (missing chunks, damaged files: one line),
names.py, fingerprint.py, location.py (a folder or an fsspec URL), hdf5.py, verify.py.
"""
from .names import ood_split_name, parse_train_split, train_split_name
from .fingerprint import compare, fingerprint as manifest_key
from .split import Chunk, Split
from .store import Cache, create_cache, open_cache
from .writer import SplitWriter

__all__ = ["Cache", "Chunk", "Split", "SplitWriter", "create_cache", "open_cache", "manifest_key", "compare",
           "train_split_name", "parse_train_split", "ood_split_name"]
