"""Every renderer behind one protocol (NAME, EXTENSION, render(report) -> str), on the same reports:
an empty one and one with findings, requests and hostile strings."""
from __future__ import annotations

import json

import pytest

from diag import render
from diag.analyze.report import build_report
from diag.errors import DiagError
from diag.model import Dataset

import sys, os  # noqa: E401
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "rules"))
from synth import ctx, request, sample, steady  # noqa: E402


def reports() -> dict[str, dict]:
    busy = ctx(steady() + [request(100 + i, 30, sync=25) for i in range(10)],
               samples=[sample(10, 10_000 + i, "<script>alert(1)</script>", "do_GET") for i in range(20)], python=True)
    return {"empty": build_report(Dataset()), "busy": build_report(busy.data)}


@pytest.mark.parametrize("name", ["empty", "busy"])
@pytest.mark.parametrize("renderer", render.renderers(), ids=lambda r: r.NAME)
def test_every_renderer_renders_every_report(renderer, name):
    report = reports()[name]
    text = renderer.render(report)
    assert isinstance(text, str) and text.strip()
    assert renderer.NAME and renderer.EXTENSION.startswith(".")
    if renderer.NAME == "json":
        assert json.loads(text) == json.loads(json.dumps(report))
    if name == "busy":
        assert "disk-sync" in text
        if renderer.NAME == "html":
            assert "<script>alert(1)</script>" not in text          # escaped


def test_the_renderer_is_chosen_from_the_files_extension(tmp_path):
    report = reports()["busy"]
    for fname, name in (("r.json", "json"), ("r.html", "html"), ("s.md", "markdown"), ("r.txt", "terminal")):
        assert render.for_path(fname).NAME == name
        render.write(report, str(tmp_path / fname))
        assert (tmp_path / fname).read_text().strip()
    with pytest.raises(DiagError):
        render.for_path("report.pdf")
