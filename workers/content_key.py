"""Step 3: the content key, a hash of everything that decides a verdict and nothing else.

Two events with the same normalised text, response and image bytes, judged by the same model
version under the same policy version, get the same key; change any of those and the key changes.
Event ids, tenants and timestamps are deliberately left out, so repeats across users hit the cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence

_WHITESPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """NFKC-fold and collapse whitespace; case is kept because it can carry meaning. (ASCII text is its own
    NFKC form: the fold is skipped for it, the common case on the hot path.)"""
    folded = text if text.isascii() else unicodedata.normalize("NFKC", text)
    return _WHITESPACE.sub(" ", folded).strip()


def content_key(
    text: str,
    response: str | None,
    image_digests: Sequence[str],
    model_name: str,
    model_version: str,
    policy_version: str,
) -> str:
    payload = {
        "text": normalise_text(text),
        "response": None if response is None else normalise_text(response),
        "images": list(image_digests),
        "model": [model_name, model_version],
        "policy": policy_version,
    }
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # surrogatepass: a lone surrogate (which decode refuses, but other callers may pass) still hashes
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
