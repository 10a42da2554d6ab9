"""The console's colours meet WCAG 2.1 AA contrast (4.5:1 for text) on the backgrounds they
are used on: every text/background pair of ``console.css``, computed from its palette."""

from __future__ import annotations

import re
from importlib import resources

import pytest

CSS = (resources.files("services.console") / "static" / "console.css").read_text()
PALETTE = dict(re.findall(r"--([a-z]+):\s*(#[0-9a-fA-F]{6})", CSS))
WHITE, NAVY, FLASH = "#ffffff", "#102a43", "#fff2b3"

#: (text, background, where): every pair the stylesheet puts together. A row flashes FLASH
#: when it changes, so the colours of fleet cells are checked on it too.
PAIRS = [
    ("fg", "bg", "body text"),
    ("muted", "bg", "hints, meta, definition terms"),
    ("accent", "bg", "links, secondary buttons, unpressed tabs"),
    ("ok", "bg", "online"),
    ("bad", "bg", "offline, critical, errors"),
    ("warn", "bg", "warning severity"),
    ("fg", "panel", "counts, table headers"),
    ("muted", "panel", "unavailable notes"),
    ("accent", "panel", "links in panels"),
    (WHITE, "accent", "buttons"),
    (WHITE, "bad", "fall banner, alert badge"),
    (WHITE, NAVY, "top bar"),
    (NAVY, WHITE, "current page in the top bar"),
    ("fg", FLASH, "a changed fleet row"),
    ("ok", FLASH, "online in a changed row"),
    ("bad", FLASH, "offline in a changed row"),
    ("muted", FLASH, "unknown in a changed row"),
]


def _colour(name: str) -> str:
    return name if name.startswith("#") else PALETTE[name]


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    """WCAG 2.1 contrast ratio of two sRGB colours (1 to 21)."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_the_formula_gives_wcags_reference_values() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)


def test_the_palette_is_the_one_checked() -> None:
    assert {"bg", "fg", "muted", "accent", "ok", "bad", "warn", "panel"} <= PALETTE.keys()


@pytest.mark.parametrize(("text", "background", "where"), PAIRS)
def test_text_contrast_is_at_least_aa(text: str, background: str, where: str) -> None:
    ratio = contrast(_colour(text), _colour(background))
    assert ratio >= 4.5, f"{where}: {text} on {background} is {ratio:.2f}:1"
