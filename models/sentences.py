"""Real English sentences for the text models, made from text that ships with the OS (no download).

Source: the license texts in /usr/share/common-licenses (Debian's base-files: GPL, Apache, MPL, ...),
read in sorted file order, whitespace-normalised, split at sentence ends, kept when 30-240 characters
with mostly letters, de-duplicated in first-seen order. Deterministic for a given base-files version;
the sha256 of the joined list is reported so two machines can check they compared the same text.
A fallback source is the docstrings of Python's standard library modules (same rules), for systems
without common-licenses.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

LICENSES = Path("/usr/share/common-licenses")
_SPLIT = re.compile(r"(?<=[.!?;])\s+(?=[A-Z\"'(])")


def _clean(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in _SPLIT.split(text):
        s = s.strip()
        letters = sum(ch.isalpha() for ch in s)
        if 30 <= len(s) <= 240 and letters >= 0.7 * len(s) and not s.isupper():
            out.append(s)
    return out


def _license_texts() -> list[str]:
    if not LICENSES.is_dir():
        return []
    return [p.read_text(errors="replace") for p in sorted(LICENSES.iterdir()) if p.is_file()]


def _stdlib_docstrings() -> list[str]:
    import importlib

    texts = []
    for name in ("argparse", "collections", "datetime", "email", "fractions", "functools", "json", "logging",
                 "pathlib", "random", "statistics", "string", "textwrap", "threading", "unittest", "zipfile"):
        mod = importlib.import_module(name)
        texts.append(mod.__doc__ or "")
        for attr in sorted(dir(mod)):
            doc = getattr(getattr(mod, attr), "__doc__", None)
            if isinstance(doc, str):
                texts.append(doc)
    return texts


def sentences(n: int = 256) -> list[str]:
    """The first ``n`` distinct sentences (license texts first, then stdlib docstrings)."""
    seen: dict[str, None] = {}
    for source in (_license_texts, _stdlib_docstrings):
        for text in source():
            for s in _clean(text):
                seen.setdefault(s, None)
                if len(seen) >= n:
                    return list(seen)
    return list(seen)


def digest(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


if __name__ == "__main__":
    got = sentences()
    print(len(got), digest(got))
    for s in got[:5] + got[-3:]:
        print("-", s)
