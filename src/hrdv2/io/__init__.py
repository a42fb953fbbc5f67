"""Reading images, label maps and stacks; writing outputs atomically.

Conventions (documented in the README, relied on everywhere):

* ``read_image`` returns the pixels as stored: ``(H, W)`` for grey, ``(H, W, 3)`` for colour,
  dtype uint8 / uint16 / float32. Palette images become RGB (or grey when all channels are
  equal); an alpha channel is dropped (the colour channels are kept unchanged).
* ``to_float01`` maps any image to float32 in [0, 1]: uint8 is divided by 255; uint16, other
  integer and float images are min-max rescaled (16-bit micrographs rarely use the full range).
* Float images holding NaN or inf are **refused**, not sanitised: any replacement value would
  be a guess that changes results (min-max scaling, features, statistics), so the user chooses.
* Label maps (scribbles, ground truth) are single-channel integer arrays: 0 = unlabelled /
  ignore, 1..K = class ids (K <= 65535). Negative, non-integer, NaN/inf or larger values are
  refused, never rounded or clipped.
* Sizes are checked from the header before decoding: an image whose decoded pixels would need
  more than the budget (``HRDV2_MAX_IMAGE_BYTES``, default a third of available memory) is
  refused, and so is a file far smaller than its declared pixels could compress to.
* Any failure to decode (garbage, truncation, unsupported variant) is an ``ImageReadError``
  naming the file and the cause; no decoder exception escapes.
* Every writer goes through ``atomic_path``: the data lands in a temporary file beside the
  target and is renamed over it, so an interrupted run never leaves a half-written file. New
  files get the permissions a plain ``open()`` gives (0666 minus the umask); an overwritten
  file keeps its mode. Temporary files of killed runs are removed on the next write.

The package: ``limits`` (memory budgets), ``decode`` (file -> pages), ``read`` (images, labels,
stacks, folders), ``write`` (atomic outputs). Import from ``hrdv2.io``; the names stay here.
"""

from __future__ import annotations

from hrdv2.io.decode import (
    DEFLATE_MAX_RATIO,
    IMAGE_SUFFIXES,
    MIN_SIDE,
    PIL_FORMATS,
    TIFF_SUFFIXES,
    _normalise_channels,  # noqa: F401  (hrdv2.timeseries normalises video frames with it)
)
from hrdv2.io.limits import (
    IMAGE_BUDGET_DIVISOR,
    MAX_IMAGE_BYTES_ENV,
    MAX_MEMORY_BYTES_ENV,
    TOO_LARGE_FIX,
    available_memory_bytes,
    check_decoded_size,
    estimate_bytes,
    image_budget_bytes,
    require_memory,
)
from hrdv2.io.read import (
    LABEL_MAP_SUFFIXES,
    MAX_LABEL,
    expand_inputs,
    list_images,
    read_image,
    read_label_stack,
    read_labels,
    read_stack,
    to_float01,
    to_rgb01,
)
from hrdv2.io.write import (
    STALE_FOREIGN_PART_S,
    STALE_LEGACY_PART_S,
    _host_tag,  # noqa: F401  (tests name temporary files as this host does)
    atomic_path,
    check_writable,
    remove_stale_parts,
    write_bytes_atomic,
    write_image,
    write_npy,
    write_text_atomic,
)

__all__ = [
    "DEFLATE_MAX_RATIO",
    "IMAGE_BUDGET_DIVISOR",
    "IMAGE_SUFFIXES",
    "LABEL_MAP_SUFFIXES",
    "MAX_IMAGE_BYTES_ENV",
    "MAX_LABEL",
    "MAX_MEMORY_BYTES_ENV",
    "MIN_SIDE",
    "PIL_FORMATS",
    "STALE_FOREIGN_PART_S",
    "STALE_LEGACY_PART_S",
    "TIFF_SUFFIXES",
    "TOO_LARGE_FIX",
    "atomic_path",
    "available_memory_bytes",
    "check_decoded_size",
    "check_writable",
    "estimate_bytes",
    "expand_inputs",
    "image_budget_bytes",
    "list_images",
    "read_image",
    "read_label_stack",
    "read_labels",
    "read_stack",
    "remove_stale_parts",
    "require_memory",
    "to_float01",
    "to_rgb01",
    "write_bytes_atomic",
    "write_image",
    "write_npy",
    "write_text_atomic",
]
