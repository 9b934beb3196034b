"""Fonts for the pictures we draw, so that any file or folder name shows without boxes or warnings.

DejaVu Sans (matplotlib ships it) draws Latin, Greek and Cyrillic but no Chinese, Japanese or
Korean. When a font with those glyphs is installed (Noto Sans CJK, Source Han Sans, WenQuanYi,
Microsoft YaHei, …) such names are drawn in it; otherwise the characters no font has are written as
``\\uXXXX`` escapes, which are readable and unambiguous, where a box would be neither. The search for
a CJK font only runs when a text needs one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

BASE_FAMILY = "DejaVu Sans"
#: Font families with CJK glyphs, in order of preference (their names in matplotlib's font list).
CJK_FAMILIES = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Noto Sans SC", "Noto Sans JP",
    "Source Han Sans", "Source Han Sans SC", "Source Han Sans JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
    "Droid Sans Fallback", "Microsoft YaHei", "Microsoft JhengHei", "Yu Gothic", "Meiryo", "MS Gothic",
    "Malgun Gothic", "SimHei", "PingFang SC", "Hiragino Sans", "Hiragino Sans GB", "Apple SD Gothic Neo",
    "Arial Unicode MS", "AR PL UMing CN", "AR PL UKai CN",
)
#: The same fonts by file name, for fonts installed after matplotlib cached its font list.
_CJK_FILE = re.compile(
    r"notosanscjk|notosans(sc|jp|tc|kr)|sourcehansans|wqy|droidsansfallback|msyh|msjh|yugoth|meiryo|msgothic|malgun|"
    r"simhei|pingfang|hiragino|applesdgothic|arial ?unicode|uming|ukai",
    re.IGNORECASE,
)
_PROBE = 0x4E00  # 一, the first unified ideograph: a font that has it is a CJK font


@lru_cache(maxsize=None)
def _family_file(family: str) -> str | None:
    """The file of ``family`` in matplotlib's font list (exact name), else ``None``."""
    try:
        from matplotlib import font_manager
    except ImportError:
        return None
    return next((entry.fname for entry in font_manager.fontManager.ttflist if entry.name == family), None)


@lru_cache(maxsize=None)
def _charset(path: str) -> frozenset[int]:
    """Code points the font file has glyphs for."""
    try:
        from matplotlib.ft2font import FT2Font

        return frozenset(FT2Font(path).get_charmap())
    except Exception:  # noqa: BLE001 - an unreadable font is one without glyphs
        return frozenset()


@lru_cache(maxsize=None)
def cjk_font_file() -> str | None:
    """An installed font file with CJK glyphs (see :data:`CJK_FAMILIES`), else ``None``."""
    for family in CJK_FAMILIES:
        path = _family_file(family)
        if path is not None and _PROBE in _charset(path):
            return path
    try:
        from matplotlib import font_manager

        candidates = sorted(p for p in font_manager.findSystemFonts() if _CJK_FILE.search(Path(p).name))
    except Exception:  # noqa: BLE001 - no font search here: no CJK font
        return None
    return next((p for p in candidates if _PROBE in _charset(p)), None)


def _base_file() -> str | None:
    return _family_file(BASE_FAMILY)


def _needs_more(text: str) -> bool:
    base = _base_file()
    charset = _charset(base) if base else frozenset()
    return any(not char.isspace() and ord(char) not in charset for char in unicodedata.normalize("NFKC", text))


def _font_files(texts: Iterable[str]) -> list[str]:
    """DejaVu Sans, and the CJK font when one of ``texts`` has glyphs DejaVu lacks."""
    files = [p for p in (_base_file(),) if p]
    if any(_needs_more(t) for t in texts) and cjk_font_file():
        files.append(cjk_font_file())
    return files


def _drawable_by(text: str, charsets: list[frozenset[int]]) -> str:
    """``text`` with what no charset covers written as escapes (NFKC first: full-width Ａ is A)."""
    out = []
    for char in unicodedata.normalize("NFKC", text):
        code = ord(char)
        if char.isspace() or any(code in charset for charset in charsets):
            out.append(char)
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def plot_texts(texts: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(texts as matplotlib can draw them, fontfamily)`` for the texts of one figure.

    The family list is DejaVu Sans, then the CJK font when a text needs it (matplotlib falls back
    glyph by glyph); what neither has is escaped, so no missing-glyph warning and no box.
    """
    texts = list(texts)
    files = _font_files(texts)
    if not files:
        return texts, []
    families = [BASE_FAMILY]
    if len(files) > 1:
        from matplotlib import font_manager

        if _family_file_name(files[1]) is None:
            font_manager.fontManager.addfont(files[1])  # installed after matplotlib listed the fonts
        families.append(_family_file_name(files[1]) or BASE_FAMILY)
    charsets = [_charset(p) for p in files]
    return [_drawable_by(t, charsets) for t in texts], families


def _family_file_name(path: str) -> str | None:
    from matplotlib import font_manager

    return next((entry.name for entry in font_manager.fontManager.ttflist if entry.fname == path), None)


@lru_cache(maxsize=64)
def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def draw_font(text: str, size: int) -> tuple[ImageFont.ImageFont, str]:
    """A Pillow font at ``size`` px for ``text``, and ``text`` as that font can draw it.

    DejaVu Sans when it has every glyph, else the CJK font when that has more of them (Pillow does
    not fall back glyph by glyph); Pillow's built-in font (Latin-1 only) when there is neither.
    """
    normalized = unicodedata.normalize("NFKC", text)
    best: tuple[int, str] | None = None
    for path in _font_files([text]):
        charset = _charset(path)
        missing = sum(1 for char in normalized if not char.isspace() and ord(char) not in charset)
        if best is None or missing < best[0]:
            best = (missing, path)
    if best is not None:
        try:
            return _truetype(best[1], size), _drawable_by(text, [_charset(best[1])])
        except OSError:
            pass
    latin1 = frozenset(range(0x20, 0x7F)) | frozenset(range(0xA0, 0x100))
    return ImageFont.load_default(), _drawable_by(text, [latin1])
