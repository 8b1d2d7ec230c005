"""Real English sentences for the text models, made from text that ships with the OS (no download).

Source: the license texts in /usr/share/common-licenses (Debian's base-files: GPL, Apache, MPL, ...),
read in sorted file order, whitespace-normalised, split at sentence ends, kept when 30-240 characters
with mostly letters, de-duplicated in first-seen order. Deterministic for a given base-files version;
the sha256 of the joined list is reported so two machines can check they compared the same text.
A fallback source is the docstrings of Python's standard library modules (same rules), for systems
without common-licenses.
"""

from __future__ import annotations

from qcompiler.text_calibration import LICENSES, builtin_sentences, digest

__all__ = ["LICENSES", "digest", "sentences"]


def sentences(n: int = 256) -> list[str]:
    """The first ``n`` distinct sentences (license texts first, then stdlib docstrings).

    The implementation lives in :mod:`qcompiler.text_calibration` (it is also the compiler's built-in
    calibration text for encoders), so the tests and ``qcompile`` read the very same sentences.
    """
    return builtin_sentences(n)


if __name__ == "__main__":
    got = sentences()
    print(len(got), digest(got))
    for s in got[:5] + got[-3:]:
        print("-", s)
