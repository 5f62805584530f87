"""The site table fits the terminal: full names and the bar when there is room, then full names
without the bar, and only then names shortened with an ellipsis; no line is ever wider."""

from __future__ import annotations

from fixed import fixed_report

from reludoctor.reporters.common import RenderOptions
from reludoctor.reporters.terminal import render

BAR_CHARS = set("█·")


def table_lines(width: int) -> list[str]:
    text = render(fixed_report(), RenderOptions(width=width))
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if " site " in line)
    end = next(i for i in range(start + 2, len(lines)) if not lines[i].strip())
    return lines[start:end]


def test_wide_terminal_has_full_names_and_bars():
    lines = table_lines(200)
    names = [s.name for s in fixed_report().sites]
    assert all(any(name in line for line in lines) for name in names)
    assert sum(bool(BAR_CHARS & set(line)) for line in lines) == len(names)


def test_bar_goes_before_any_name_is_shortened():
    longest = max((s.name for s in fixed_report().sites), key=len)
    widths = [w for w in range(60, 200) if all("…" not in line for line in table_lines(w))]
    narrowest = min(widths)
    lines = table_lines(narrowest)
    assert not any(BAR_CHARS & set(line) for line in lines[2:])  # no bar at the narrowest fit
    assert any(longest in line for line in lines)
    assert any(BAR_CHARS & set(line) for line in table_lines(narrowest + 12)[2:])  # room: bars back


def test_narrow_terminal_shortens_names_and_never_overflows():
    for width in (50, 64, 80):
        lines = table_lines(width)
        assert all(len(line) <= width for line in lines), width
        assert any("…" in line for line in lines)
