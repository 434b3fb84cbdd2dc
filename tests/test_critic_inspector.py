"""The critic inspector page: its HTML, and what headless Chromium shows of it."""

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llmac.critic.inspector import render_inspector, write_inspector

RECORDS = [
    {
        "question": "What is <script>document.title='pwned'</script> & 2?",
        "steps": ["a = 1", "b < 2", "so c = 3"],
        "values": [0.9, 0.3, 0.1],
        "labels": [1.0, 0.5, 0.0],
        "reward": 0,
        "gold": "7",
    },
    {"question": "Q2", "steps": ["x", "y"], "values": [0.8, 0.7], "reward": 1},
    {"question": "Q3", "steps": ["p", "q", "r", "s"], "values": [0.6, 0.55, 0.45, 0.2], "reward": 0},
]
VOID_TAGS = {"meta", "input", "br", "img", "link", "hr"}


class _Elements(HTMLParser):
    """Flat list of elements: tag, attributes, all text inside, enclosing solution index."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict] = []
        self._open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        # the data-index of the solution <section> the element sits in, if any
        section = next(
            (e["attrs"].get("data-index") for e in reversed(self._open) if e["tag"] == "section"), None
        )
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "solution": section}
        self.elements.append(element)
        if tag not in VOID_TAGS:
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open and self._open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def find(self, tag: str, cls: str | None = None) -> list[dict]:
        return [
            e
            for e in self.elements
            if e["tag"] == tag and (cls is None or cls in e["attrs"].get("class", "").split())
        ]


def parse(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    return parser


def test_page_escapes_text_and_carries_values():
    page = render_inspector(RECORDS, title="Critic <v1> & co")
    assert "<script>document" not in page
    assert "What is &lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt; &amp; 2?" in page
    assert "<title>Critic &lt;v1&gt; &amp; co</title>" in page
    assert "b &lt; 2" in page
    assert not re.search(r"(src|href)=|https?://|@import", page), "the page must not load anything"
    dom = parse(page)
    assert len(dom.find("script")) == 1  # only the page's own filter script
    steps = dom.find("li", "step")
    assert [float(s["attrs"]["data-value"]) for s in steps] == [0.9, 0.3, 0.1, 0.8, 0.7, 0.6, 0.55, 0.45, 0.2]
    assert [s["text"][:5] for s in steps[:3]] == ["0.900", "0.300", "0.100"]
    # red -> green: value 0.1 gets hue 12, value 0.9 hue 108
    assert "hsl(108," in steps[0]["attrs"]["style"] and "hsl(12," in steps[2]["attrs"]["style"]
    flagged = dom.find("li", "flagged")
    assert [(f["attrs"]["data-step"], "first flagged step" in f["text"]) for f in flagged] == [
        ("1", True),
        ("2", True),
    ]
    assert [s["attrs"]["data-step"] for s in dom.find("li", "reference-error")] == ["2"]
    summary = dom.find("p", "summary")[0]
    assert (summary["attrs"]["data-solutions"], summary["attrs"]["data-flagged"]) == ("3", "2")
    assert "1 of 3 correct" in summary["text"]


def test_threshold_moves_the_flag():
    dom = parse(render_inspector(RECORDS, threshold=0.75))
    solutions = dom.find("section", "solution")
    assert [s["attrs"]["data-first-flagged"] for s in solutions] == ["1", "1", "0"]


def test_bad_records_name_the_record(tmp_path):
    with pytest.raises(ValueError, match="record 1: 2 steps but 1 values"):
        render_inspector([RECORDS[0], {"question": "q", "steps": ["a", "b"], "values": [0.5]}])
    with pytest.raises(ValueError, match="record 0: missing field 'values'"):
        render_inspector([{"question": "q", "steps": ["a"]}])
    with pytest.raises(ValueError, match="record 0: value of step 1 is nan"):
        render_inspector([{"question": "q", "steps": ["a", "b"], "values": [0.5, float("nan")]}])
    with pytest.raises(ValueError, match="record 0: 1 steps but 2 labels"):
        render_inspector([{"question": "q", "steps": ["a"], "values": [0.5], "labels": [1, 0]}])


def test_write_is_atomic(tmp_path):
    path = write_inspector(tmp_path / "out" / "page.html", RECORDS)
    assert path.read_text(encoding="utf-8") == render_inspector(RECORDS)
    assert sorted(p.name for p in path.parent.iterdir()) == ["page.html"]


def _chromium(*args: str, profile: Path, timeout: float = 120) -> str:
    """Run headless Chromium offline with a throwaway profile; its stdout (e.g. the dumped DOM)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium not found: run scripts/setup.sh (it installs it with apt)")
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def test_browser_shows_solutions_flags_and_filter(tmp_path):
    url = write_inspector(tmp_path / "page.html", RECORDS).as_uri()

    dom = parse(_chromium("--virtual-time-budget=2000", "--dump-dom", url, profile=tmp_path / "p1"))
    solutions = dom.find("section", "solution")
    assert len(solutions) == 3
    steps = dom.find("li", "step")
    assert [sum(s["solution"] == str(i) for s in steps) for i in range(3)] == [3, 2, 4]
    assert not any("hidden" in s["attrs"] for s in solutions)
    assert dom.find("body")[0]["attrs"]["data-filter"] == "all"  # the script ran
    flagged = dom.find("li", "flagged")
    assert [f["attrs"]["data-step"] for f in flagged] == ["1", "2"]
    assert all(f["text"].count("first flagged step") == 1 for f in flagged)
    # the question's <script> stayed text: no extra element, and it did not run
    assert len(dom.find("script")) == 1
    assert "<script>document.title='pwned'</script>" in solutions[0]["text"]
    assert dom.find("title")[0]["text"] == "Step critic inspector"

    dom = parse(
        _chromium("--virtual-time-budget=2000", "--dump-dom", url + "#flagged", profile=tmp_path / "p2")
    )
    assert dom.find("body")[0]["attrs"]["data-filter"] == "flagged"
    hidden = [s["attrs"]["data-index"] for s in dom.find("section", "solution") if "hidden" in s["attrs"]]
    assert hidden == ["1"]  # the only solution without a flagged step


def test_browser_screenshot_is_drawn(tmp_path):
    url = write_inspector(tmp_path / "page.html", RECORDS).as_uri()
    png = tmp_path / "shot.png"
    _chromium(
        "--hide-scrollbars", "--window-size=900,700", f"--screenshot={png}", url, profile=tmp_path / "p"
    )
    assert png.stat().st_size > 1000
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        rgb = image.convert("RGB")
    assert rgb.size == (900, 700)
    assert any(low != high for low, high in rgb.getextrema()), "the screenshot is one flat colour"
    colours = {colour for _, colour in rgb.getcolors(maxcolors=1 << 20)}
    assert (187, 0, 0) in colours  # the flagged step's outline and badge (#b00)
