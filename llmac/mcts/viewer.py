"""``llmac mcts view``: one self-contained HTML page per search tree.

Each node is a box coloured by its value on [0, 1] (red 0 -> green 1, as the critic inspector colours
steps), labelled with the start of its step, its value and visits; hovering shows the whole step,
clicking (or the URL hash ``#n<index>``) fills the side panel with the node's step, path text,
value, visits, prior and verdict. The chosen path (:func:`llmac.mcts.solve.chosen_node`: the
best-valued terminal, or the most visited path) is outlined and badged. Verified terminals carry a
check or a cross. Pages load nothing from outside, so they open offline; ``index.html`` lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from llmac.config import parse_config
from llmac.errors import ConfigError
from llmac.files import write_text_atomically
from llmac.mcts.config import MCTSViewConfig
from llmac.mcts.solve import chosen_node, node_value
from llmac.mcts.tree import Node, Tree
from llmac.outputs import check_output, staged_folder

COMMAND = "mcts view"
LABEL_CHARS = 28

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; padding: 1em; color: #222; display: flex; gap: 1em; }
main { flex: 3; overflow-x: auto; }
aside { flex: 1; min-width: 18em; position: sticky; top: 0; align-self: flex-start; border: 1px solid #ccc;
  border-radius: 6px; padding: 0.5em 1em; background: #fafafa; }
aside pre { white-space: pre-wrap; background: #fff; border: 1px solid #ddd; padding: 0.4em; }
.question { white-space: pre-wrap; font-weight: 600; }
ul.children { list-style: none; margin: 0; padding-left: 1.6em; border-left: 1px dashed #bbb; }
li.branch { margin: 0.25em 0; }
.node { display: inline-block; cursor: pointer; padding: 0.15em 0.5em; border: 2px solid; border-radius: 4px;
  font-family: monospace; white-space: pre; }
.node.chosen { outline: 3px solid #1a3fbf; outline-offset: 1px; }
.node.selected { box-shadow: 0 0 0 3px #222; }
.node .value { font-weight: bold; margin-right: 0.5em; }
.node .visits { color: #555; margin-left: 0.5em; }
.badge { display: inline-block; font-size: 0.8em; padding: 0 0.4em; margin-left: 0.4em; border-radius: 4px;
  color: #fff; background: #1a3fbf; font-family: system-ui, sans-serif; }
.verdict.correct { color: #060; font-weight: bold; margin-left: 0.4em; }
.verdict.wrong { color: #b00; font-weight: bold; margin-left: 0.4em; }
"""

_JS = """
(function () {
  var panel = document.getElementById("detail");
  function show(box) {
    document.querySelectorAll(".node.selected").forEach(function (b) { b.classList.remove("selected"); });
    box.classList.add("selected");
    panel.setAttribute("data-node", box.getAttribute("data-index"));
    var d = box.dataset;
    panel.querySelector(".d-step").textContent = d.step;
    panel.querySelector(".d-path").textContent = d.path;
    panel.querySelector(".d-stats").textContent = "value " + d.value + " · visits " + d.visits +
      " · prior " + d.prior + " · depth " + d.depth + (d.verdict ? " · " + d.verdict : "");
  }
  document.querySelectorAll(".node").forEach(function (box) {
    box.addEventListener("click", function () { location.hash = "n" + box.getAttribute("data-index"); });
  });
  function fromHash() {
    var box = document.getElementById(location.hash.slice(1)) || document.getElementById("n0");
    if (box) { show(box); }
  }
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
"""


def value_colour(value: float) -> tuple[str, str]:
    """Background and border colours of a value on [0, 1]: hue 0 (red) at 0 to 120 (green) at 1."""
    hue = round(120 * min(max(value, 0.0), 1.0))
    return f"hsl({hue}, 75%, 86%)", f"hsl({hue}, 70%, 35%)"


def _verdict(node: Node) -> str:
    if node.correct is None:
        return ""
    return f"correct (reward {node.reward:g})" if node.correct else f"wrong (reward {node.reward:g})"


def _label(node: Node) -> str:
    text = " ".join(node.text.split()) if node.parent is not None else "(question)"
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _node_html(tree: Tree, node: Node, index: dict[int, int], chosen: set[int], lines: list[str]) -> None:
    i = index[id(node)]
    value = node_value(tree, node)
    background, border = value_colour(value)
    classes = "node" + (" chosen" if i in chosen else "") + (" terminal" if node.terminal else "")
    verdict = _verdict(node)
    mark = ""
    if node.correct is not None:
        mark = f'<span class="verdict {"correct" if node.correct else "wrong"}">{"✓" if node.correct else "✗"}</span>'
    badge = '<span class="badge">chosen</span>' if i in chosen and not node.children else ""
    attrs = {
        "id": f"n{i}",
        "class": classes,
        "data-index": str(i),
        "data-value": f"{value:.4f}",
        "data-visits": str(node.visits),
        "data-prior": f"{node.prior:.3f}",
        "data-depth": str(node.depth),
        "data-verdict": verdict,
        "data-step": node.text,
        "data-path": node.prefix_text(),
        "title": node.text or tree.question,
        "style": f"background: {background}; border-color: {border}",
    }
    attr_text = " ".join(f'{k}="{escape(v)}"' for k, v in attrs.items())
    lines.append(
        f'<li class="branch"><div {attr_text}><span class="value">{value:.2f}</span>'
        f'<span class="text">{escape(_label(node))}</span><span class="visits">n={node.visits}</span>'
        f"{mark}{badge}</div>"
    )
    if node.children:
        lines.append('<ul class="children">')
        for child in node.children:
            _node_html(tree, child, index, chosen, lines)
        lines.append("</ul>")
    lines.append("</li>")


def render_tree_page(tree: Tree, number: int = 0, answer_by: str = "value") -> str:
    """The page of one tree as a string."""
    nodes = list(tree.root.walk())
    index = {id(node): i for i, node in enumerate(nodes)}
    end = chosen_node(tree, answer_by)
    chosen = {index[id(n)] for n in [tree.root, *end.path()]}
    correct = sum(bool(n.terminal and n.correct) for n in nodes)
    terminals = sum(n.terminal for n in nodes)
    title = f"Search tree {number}"
    lines: list[str] = []
    _node_html(tree, tree.root, index, chosen, lines)
    summary = (f"{len(nodes) - 1} nodes below the question · {terminals} terminals · {correct} verified correct · gold "
               f"{escape(tree.answer)} · chosen path by {answer_by}: {len(chosen) - 1} steps")  # fmt: skip
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head><body>",
            "<main>",
            f"<h1>{escape(title)}</h1>",
            f'<p class="question">{escape(tree.question)}</p>',
            f'<p class="summary" data-nodes="{len(nodes) - 1}" data-chosen="{len(chosen)}">{summary}</p>',
            '<ul class="children root">',
            *lines,
            "</ul>",
            "</main>",
            '<aside id="detail" data-node="">',
            "<h2>Node</h2>",
            '<p class="d-stats"></p>',
            '<h3>Step</h3><pre class="d-step"></pre>',
            '<h3>Response so far</h3><pre class="d-path"></pre>',
            "</aside>",
            f"<script>{_JS}</script>",
            "</body></html>",
            "",
        ]
    )


def render_index(trees: Sequence[Tree], names: Sequence[str]) -> str:
    """A page listing every tree page with its question and counts."""
    items = []
    for tree, name in zip(trees, names, strict=True):
        nodes = sum(1 for _ in tree.nodes())
        items.append(f'<li><a href="{escape(name)}">{escape(tree.question[:80])}</a> · {nodes} nodes'
                     f"{' · solved' if tree.root.has_correct_terminal() else ''}</li>")  # fmt: skip
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      "<title>Search trees</title></head><body>", "<h1>Search trees</h1>", "<ol>", *items,
                      "</ol>", "</body></html>", ""])  # fmt: skip


def write_tree_pages(
    trees: Sequence[Tree], output_dir: str | Path, answer_by: str = "value", overwrite: bool = False
) -> list[Path]:
    """``tree-00000.html``, ... and ``index.html`` in ``output_dir`` (swapped in whole); the pages."""
    output_dir = Path(output_dir)
    check_output(output_dir, COMMAND, overwrite=overwrite)
    names = [f"tree-{i:05d}.html" for i in range(len(trees))]
    with staged_folder(output_dir, COMMAND) as staging:
        for number, (tree, name) in enumerate(zip(trees, names, strict=True)):
            write_text_atomically(staging / name, render_tree_page(tree, number, answer_by))
        write_text_atomically(staging / "index.html", render_index(trees, names))
    return [output_dir / name for name in names]


def main(argv: Sequence[str] | None = None) -> Path:
    from llmac.mcts.build import load_trees

    (config,) = parse_config([MCTSViewConfig], argv, prog="llmac mcts view")
    if not (config.trees and config.output_dir):
        raise ConfigError("llmac mcts view: --trees and --output_dir are required")
    check_output(config.output_dir, COMMAND, overwrite=config.overwrite, sources=[config.trees])
    trees = load_trees(config.trees)[: config.max_trees]
    pages = write_tree_pages(trees, config.output_dir, config.answer_by, overwrite=config.overwrite)
    print(
        f"llmac mcts view: wrote {len(pages)} tree pages to {Path(config.output_dir).resolve()} (index.html)"
    )
    return Path(config.output_dir)
