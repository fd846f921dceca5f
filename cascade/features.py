"""Text normalization shared by training and serving.

The confidence model never sees raw text: :func:`normalize` runs before scikit-learn fits it and
before onnxruntime scores with it, so both see exactly the same string. That is what makes the
exported model agree with the fitted one on messy input: scikit-learn's ``char`` analyzer collapses
whitespace runs itself while the converted ONNX tokenizer does not, and case folding in the ONNX
graph depends on the process locale. Doing both here, in Python, removes the difference.

Changing :func:`normalize` changes what every model was trained on: bump :data:`FEATURE_VERSION`,
which each model's manifest records, and retrain.
"""

from __future__ import annotations

import unicodedata

__all__ = ["FEATURE_VERSION", "MAX_CHARS", "normalize"]

FEATURE_VERSION = "norm-v1:nfkc+ws+lower+4000"
"""Identifies the normalization below; a manifest whose value differs needs a retrained model."""

MAX_CHARS = 4000
"""Normalized text is cut to this many characters: the start of a prompt carries the task."""

# Raw text beyond this is never looked at, so a megabyte prompt costs what a 16 kB one does.
# Normalization rarely shrinks text by more than 4x (only long whitespace runs do).
_RAW_LIMIT = 4 * MAX_CHARS


def normalize(text: str) -> str:
    """Return ``text`` in the form the confidence model is trained and served on.

    NFKC-normalized (full-width letters, ligatures and compatibility forms folded), every run of
    whitespace (spaces, tabs, newlines, Unicode spaces) turned into one space, stripped,
    lower-cased and cut to :data:`MAX_CHARS` characters.
    """
    text = unicodedata.normalize("NFKC", text[:_RAW_LIMIT])
    # str.split() splits on exactly what str.isspace() accepts and drops the ends; it is ~4x
    # faster than re.sub(r"\s+", " ", ...). rstrip: the cut may end on a space.
    return " ".join(text.split()).lower()[:MAX_CHARS].rstrip()
