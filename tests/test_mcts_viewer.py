"""The tree viewer: a hand-built tree whose values, colours and chosen path are known, as HTML and as
headless Chromium shows it (the critic inspector's launcher and DOM parser)."""

from __future__ import annotations

import pytest
from test_critic_inspector import _chromium, parse

from llmac.errors import InputNotFoundError
from llmac.mcts.build import tree_rows
from llmac.mcts.tree import StepSample, Tree
from llmac.mcts.viewer import render_tree_page, write_tree_pages


def hand_tree() -> Tree:
    """root -> a ("1 + 1 = 2", then c correct / d wrong) and b ("1 + 1 = 3"); values on pm1.

    Node order (depth first): root 0, a 1, c 2, d 3, b 4. Values on [0, 1]: a (0.6 + 1 - 1) / 3 = 0.2
    -> 0.6, b -0.8 -> 0.1, c 1, d 0, root -0.05 -> 0.475. The best-valued terminal is c.
    """
    tree = Tree(question="What is <b>1</b> + 1?", answer="2", prompt="Q", scale="pm1")
    a, b = tree.expand(
        tree.root, [StepSample("1 + 1 = 2\n", [1], False), StepSample("1 + 1 = 3\n", [2], False)]
    )
    tree.backup(a, 0.6)
    tree.backup(b, -0.8)
    c, d = tree.expand(a, [StepSample("Answer: 2", [3], True), StepSample("Answer: 3 <wrong>", [4], True)])
    tree.backup(c, tree.set_verdict(c, 1.0, True))
    tree.backup(d, tree.set_verdict(d, 0.0, False))
    return tree


def test_page_carries_values_colours_and_the_chosen_path():
    dom = parse(render_tree_page(hand_tree(), 7))
    boxes = dom.find("div", "node")
    assert [b["attrs"]["id"] for b in boxes] == ["n0", "n1", "n2", "n3", "n4"]
    assert [float(b["attrs"]["data-value"]) for b in boxes] == [0.475, 0.6, 1.0, 0.0, 0.1]
    hues = [b["attrs"]["style"].split("hsl(")[1].split(",")[0] for b in boxes]
    assert hues == ["57", "72", "120", "0", "12"]  # red 0 -> green 120
    assert [b["attrs"]["id"] for b in dom.find("div", "chosen")] == ["n0", "n1", "n2"]
    assert [b["attrs"]["id"] for b in boxes if "chosen" in b["text"]] == ["n2"]  # the badge at its end
    assert boxes[3]["attrs"]["data-verdict"] == "wrong (reward 0)" and "✗" in boxes[3]["text"]
    assert boxes[3]["attrs"]["title"] == "Answer: 3 <wrong>"  # the whole step on hover, as text
    assert boxes[2]["attrs"]["data-path"] == "1 + 1 = 2\nAnswer: 2"
    assert dom.find("title")[0]["text"] == "Search tree 7"
    summary = dom.find("p", "summary")[0]
    assert (summary["attrs"]["data-nodes"], summary["attrs"]["data-chosen"]) == ("4", "3")
    assert "1 verified correct" in summary["text"] and "2 terminals" in summary["text"]
    # most visited: a (3 visits) then c and d tie on visits, c has the higher value
    visits = parse(render_tree_page(hand_tree(), answer_by="visits"))
    assert [b["attrs"]["id"] for b in visits.find("div", "chosen")] == ["n0", "n1", "n2"]


def test_browser_shows_the_tree_and_the_clicked_node(tmp_path):
    (page, *_) = write_tree_pages([hand_tree()], tmp_path / "pages")
    url = page.as_uri()
    dom = parse(_chromium("--virtual-time-budget=2000", "--dump-dom", url, profile=tmp_path / "p1"))
    boxes = dom.find("div", "node")
    assert len(boxes) == 5 and len(dom.find("ul", "children")) == 3  # root list, root's, a's
    assert [b["attrs"]["id"] for b in dom.find("div", "chosen")] == ["n0", "n1", "n2"]
    assert len(dom.find("script")) == 1 and "<b>1</b>" in dom.find("p", "question")[0]["text"]
    panel = dom.find("aside")[0]
    assert panel["attrs"]["data-node"] == "0"  # the script ran: the root is shown first
    dom = parse(_chromium("--virtual-time-budget=2000", "--dump-dom", url + "#n3", profile=tmp_path / "p2"))
    panel = dom.find("aside")[0]
    assert panel["attrs"]["data-node"] == "3"
    assert dom.find("pre", "d-step")[0]["text"] == "Answer: 3 <wrong>"
    assert "value 0.0000 · visits 1" in panel["text"] and "wrong (reward 0)" in panel["text"]
    assert [b["attrs"]["id"] for b in dom.find("div", "selected")] == ["n3"]


def test_browser_screenshot_has_red_and_green_nodes_and_the_chosen_outline(tmp_path):
    from PIL import Image

    (page, *_) = write_tree_pages([hand_tree()], tmp_path / "pages")
    png = tmp_path / "shot.png"
    _chromium("--hide-scrollbars", "--window-size=900,500", f"--screenshot={png}", page.as_uri(),
              profile=tmp_path / "p")  # fmt: skip
    with Image.open(png) as image:
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert any(g - r > 40 and g - b > 40 for r, g, b in colours)  # a green (high-value) node
    assert any(r - g > 40 and r - b > 40 for r, g, b in colours)  # a red (low-value) node
    assert (26, 63, 191) in colours  # the chosen path's outline (#1a3fbf)


def test_view_command_writes_a_page_per_tree(tmp_path):
    from llmac.cli import main

    trees = [hand_tree(), Tree(question="empty", answer="0", prompt="Q")]
    tree_rows(trees, [0, 1]).save_to_disk(str(tmp_path / "build" / "trees"))
    main(["mcts", "view", "--trees", str(tmp_path / "build"), "--output_dir", str(tmp_path / "view")])
    names = sorted(p.name for p in (tmp_path / "view").iterdir() if not p.name.startswith("."))
    assert names == ["index.html", "tree-00000.html", "tree-00001.html"]
    assert (tmp_path / "view" / "tree-00000.html").read_text() == render_tree_page(hand_tree(), 0)
    assert 'href="tree-00001.html"' in (tmp_path / "view" / "index.html").read_text()
    with pytest.raises(InputNotFoundError, match="no trees here"):
        from llmac.mcts.viewer import main as view

        view(["--trees", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "v2")])
