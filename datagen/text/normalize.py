"""The one text normalisation and tokenisation behind every text comparison in datagen.

Used by dedup (exact keys and MinHash shingles), the `exact` / `contains` verifiers, the DPO
near-duplicate side check and collapse's repeated openings and distinct-n, so that all of them
agree on when two texts are "the same".

Normalisation (`normalize`, `normalized`):
- Unicode NFKC: composed and decomposed accents (NFC "é" and NFD "e" + U+0301) are one text, and
  compatibility forms (full-width "ＡＢＣ１２", ligatures "ﬁ", no-break and thin spaces) become
  their plain forms.
- whitespace: every run of whitespace is one space and the ends are stripped ("collapse"), or
  only the ends are stripped ("strip"), or nothing ("keep").
- case: lowercased (Unicode lowercase, as Rust's `char::to_lowercase`) unless `casefold=False`.
  Comparisons that decide duplicates (dedup, pair sides, collapse) always lowercase; the
  `exact` / `contains` verifiers are case-sensitive unless `ignore_case` is set. Full case folding
  is not applied ("ß" and "ss" stay different).

Tokenisation (`tokens`, `token_lists`), on the normalised, lowercased text, chosen per text:
- characters of scripts written without spaces between words (Han, Hiragana, Katakana, Bopomofo,
  Thai, Lao, Khmer, Myanmar, Tai Tham, New Tai Lue, Yi, Javanese, Balinese) are one token each, so
  a Chinese, Japanese or Thai text is shingled by characters, an English one by words and a mixed
  text by both;
- any other run of letters and digits (with their combining marks) is one word; punctuation,
  symbols and underscores separate words;
- a text with neither (only emoji, punctuation, arrows, ...) is tokenised by its non-space
  characters instead, so "🎉🎉", "!!!" and "→ ←" stay three different texts; only a text that is
  empty after normalisation has no tokens.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

Whitespace = Literal["collapse", "strip", "keep"]

NO_SPACE_SCRIPTS = ("Han", "Hiragana", "Katakana", "Bopomofo", "Thai", "Lao", "Khmer", "Myanmar", "Tai_Tham", "New_Tai_Lue", "Yi", "Javanese", "Balinese")
_NO_SPACE = "".join(rf"\p{{{script}}}" for script in NO_SPACE_SCRIPTS)
# polars' regex engine (Rust `regex`) supports Unicode scripts and class differences (`--`).
TOKEN = rf"[{_NO_SPACE}]|[[\p{{L}}\p{{N}}]--[{_NO_SPACE}]][[\p{{L}}\p{{N}}\p{{M}}]--[{_NO_SPACE}]]*"
SYMBOL = r"\S"


def normalized(texts: pl.Expr, casefold: bool = True, whitespace: Whitespace = "collapse") -> pl.Expr:
    """The normalisation of the module docstring as a polars expression over a String column
    (null stays null)."""
    texts = texts.str.normalize("NFKC")
    if casefold:
        texts = texts.str.to_lowercase()
    if whitespace == "collapse":
        texts = texts.str.replace_all(r"\s+", " ").str.strip_chars()
    elif whitespace == "strip":
        texts = texts.str.strip_chars()
    return texts


def normalize_series(texts: pl.Series, casefold: bool = True, whitespace: Whitespace = "collapse") -> pl.Series:
    """`normalized` applied to a Series of texts (cast to String)."""
    return pl.select(normalized(pl.lit(texts.cast(pl.String)), casefold, whitespace)).to_series().alias(texts.name)


def normalize(text: str, casefold: bool = True, whitespace: Whitespace = "collapse") -> str:
    """One text normalised (see the module docstring)."""
    return normalize_series(pl.Series([text], dtype=pl.String), casefold, whitespace)[0]


def _nfkc_where_needed(texts: pl.Series) -> pl.Series:
    """NFKC of every text; ASCII texts are their own NFKC, so only the others are normalised."""
    others = (texts.str.len_bytes() != texts.str.len_chars()).fill_null(False).arg_true()  # not ASCII
    if len(others) == 0:
        return texts
    return texts.scatter(others, texts.gather(others).str.normalize("NFKC"))


def tokenize(texts: pl.Series) -> pl.Series:
    """Each text's tokens (module docstring) as List[String]: a null text gives null, a text
    empty after normalisation []. Work is spent only where needed: NFKC on non-ASCII texts, the
    symbol fallback on texts without letters or digits."""
    text = _nfkc_where_needed(texts.cast(pl.String)).str.to_lowercase()
    words = text.str.extract_all(TOKEN)
    wordless = (words.list.len() == 0).fill_null(False)
    if not wordless.any():
        return words.alias(texts.name)
    symbols = pl.select(pl.when(pl.lit(wordless)).then(pl.lit(text)).otherwise(pl.lit(""))).to_series().str.extract_all(SYMBOL)
    return pl.select(pl.when(pl.lit(wordless)).then(pl.lit(symbols)).otherwise(pl.lit(words))).to_series().alias(texts.name)


def tokens(text: str) -> list[str]:
    """One text's tokens (see the module docstring)."""
    return tokenize(pl.Series([text], dtype=pl.String))[0].to_list()
