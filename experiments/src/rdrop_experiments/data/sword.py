"""The Bible from installed SWORD modules (Debian ``sword-text-*`` packages, read with
``mod2imp`` from ``libsword-utils``): one ``{verse key: text}`` dict per module.

Both the parallel corpus (:mod:`rdrop_experiments.data.parallel`) and the language-modeling
corpus (:mod:`rdrop_experiments.data.text`) read their verses here.
"""

from __future__ import annotations

import re
import shutil
import subprocess

__all__ = ["SWORD_MODULES_DIR", "clean_osis", "read_sword_module"]

SWORD_MODULES_DIR = "/usr/share/sword/modules/texts/ztext"
_HINT = ("needs the Debian packages libsword-utils, sword-text-sparv and sword-text-web "
         "(`make data`, or apt-get install them as root).")
_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TITLE = re.compile(r"<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>", re.S)
_TAG = re.compile(r"<[^>]+>")
_SPACE_PUNCT = re.compile(r"\s+([,.;:!?”’)])")


def clean_osis(xml: str) -> str:
    """Plain text of one verse's OSIS XML: notes (footnotes, cross references) and
    non-canonical headings are removed with their content, other tags are stripped.

    Example:
        >>> clean_osis('<w lemma="x">In</w> <w>the</w> beginning, <w>God</w><note>fn</note>'
        ...            '<w>created</w>.')
        'In the beginning, God created.'
        >>> clean_osis('<title type="x">Heading</title><title canonical="true">A Psalm.</title> Hi')
        'A Psalm. Hi'
    """
    text = _NOTE.sub(" ", xml)
    text = _TITLE.sub(" ", text)
    text = _TAG.sub("", text)
    text = " ".join(text.split())
    return _SPACE_PUNCT.sub(r"\1", text)


def read_sword_module(module: str) -> dict[str, str]:
    """``{verse key: text}`` of an installed SWORD Bible module, in canonical order.

    Runs ``mod2imp <module>`` (well under a second), skips headings (``[ Module Heading ]``) and
    chapter/book intros (verse 0), and cleans each verse with :func:`clean_osis`. Empty verses
    (joined to a neighbour in some translations) are dropped.

    Raises:
        FileNotFoundError: ``mod2imp`` is missing. RuntimeError: the module is not installed.
    """
    exe = shutil.which("mod2imp")
    if exe is None:
        raise FileNotFoundError(f"`mod2imp` not found: reading the Bible {_HINT}")
    proc = subprocess.run([exe, module], capture_output=True)
    out = proc.stdout.decode("utf-8", errors="replace")
    if proc.returncode != 0 or "$$$" not in out:
        raise RuntimeError(f"mod2imp {module} printed no verses (is the module installed?); "
                           f"reading the Bible {_HINT}")
    verses: dict[str, str] = {}
    key, body = None, []
    for line in [*out.splitlines(), "$$$END"]:
        if line.startswith("$$$"):
            if key is not None:
                text = clean_osis(" ".join(body))
                if text:
                    verses[key] = text
            key, body = line[3:].strip(), []
            if key.startswith("[") or not re.search(r" \d+:\d+$", key) or key.endswith(":0"):
                key = None
        elif key is not None:
            body.append(line)
    return verses
