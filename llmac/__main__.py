"""``python -m llmac``: the same entry point as the ``llmac`` console script (what accelerate launch runs)."""

from llmac.cli import main

if __name__ == "__main__":
    main()
