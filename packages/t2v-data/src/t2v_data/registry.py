"""The sources the prepare stage knows (`data.source`). Adding one: a module defining `SOURCE` (see
`t2v_data.sources`), and its line here."""

from __future__ import annotations

from . import digits, folder, msrvtt, shapes, video_list
from .sources import Source

SOURCES: dict[str, Source] = {s.name: s for s in (
    shapes.SOURCE,
    digits.SOURCE,
    msrvtt.SOURCE,
    folder.SOURCE,
    video_list.SOURCE,
)}
