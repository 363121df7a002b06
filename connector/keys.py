"""Match keys: the one normal form of the values dvconnect matches people on (emails, names).

Computed in Python, never by the database, so SQLite and PostgreSQL (whatever its locale) give
the same key and the same deterministic ids for the same org. The normal form:

* Unicode NFC, so a precomposed `é` and `e` + combining acute are one letter;
* Unicode case folding (`ANDRÉ` → `andré`, `Straße` → `strasse`), not ASCII lower case;
* whitespace of any kind (tabs, newlines, no-break spaces, …) trimmed at both ends and collapsed
  to one space inside, zero-width characters and byte-order marks removed;
* with `accents="ignore"`, combining marks removed after decomposition (`andré` → `andre`), as
  Dataverse's accent-insensitive (`_CI_AI`) collations compare them — the collation of English,
  French, German and most languages. `accents="keep"` follows the `_CI_AS` collations (Finnish,
  Romanian, Thai, …). See power-platform/admin/language-collations.

An empty result is no key (None).
"""

from __future__ import annotations

import unicodedata
from typing import Literal

Accents = Literal["ignore", "keep"]
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


def match_key(value: object, accents: Accents) -> str | None:
    """The normal form of a text value; None for no value, a blank one, or a non-text one."""
    if not isinstance(value, str):
        return None
    if value.isascii():  # the common case: ASCII folds with lower(), has no marks
        key = " ".join(value.lower().split())
        return key or None
    text = unicodedata.normalize("NFC", value.translate(_INVISIBLE)).casefold()
    if accents == "ignore":
        decomposed = unicodedata.normalize("NFD", text)
        text = "".join(c for c in decomposed if not unicodedata.combining(c))
    key = " ".join(unicodedata.normalize("NFC", text).split())
    return key or None
