"""The one script llmac's HTML pages share: a checkbox (or ``#<name>`` in the URL) that shows only the
sections carrying a class, e.g. the critic inspector's flagged solutions."""

from __future__ import annotations


def filter_script(name: str, section: str, mark: str) -> str:
    """JavaScript for checkbox ``only-<name>``: hide every ``section.<section>`` without class ``mark``
    while it is checked (``#<name>`` in the URL checks it); ``body[data-filter]`` says which is shown."""
    return f"""
(function () {{
  var box = document.getElementById("only-{name}");
  function apply() {{
    var only = box.checked;
    document.body.setAttribute("data-filter", only ? "{name}" : "all");
    document.querySelectorAll("section.{section}").forEach(function (s) {{
      s.hidden = only && !s.classList.contains("{mark}");
    }});
  }}
  function fromHash() {{ box.checked = location.hash === "#{name}"; apply(); }}
  box.addEventListener("change", apply);
  window.addEventListener("hashchange", fromHash);
  fromHash();
}})();
"""
