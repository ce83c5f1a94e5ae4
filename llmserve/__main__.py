"""`python -m llmserve` is the `llmserve` command."""

from llmserve.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
