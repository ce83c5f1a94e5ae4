"""README's "Migrating from FastChat" table names every flag of FastChat 0.2.36's controller,
model worker, OpenAI API server and cli `--help`, each on a row for that command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# The flags of `python -m fastchat.serve.<command> --help` at tag v0.2.36 (argparse's -h/--help aside),
# read from fastchat/serve/{controller,model_worker,openai_api_server,cli}.py and, for the model
# worker and cli, fastchat/model/model_adapter.py's add_model_args.
MODEL_ARGS = ("--model-path", "--revision", "--device", "--gpus", "--num-gpus", "--max-gpu-memory", "--dtype",
              "--load-8bit", "--cpu-offloading", "--gptq-ckpt", "--gptq-wbits", "--gptq-groupsize",
              "--gptq-act-order", "--awq-ckpt", "--awq-wbits", "--awq-groupsize", "--enable-exllama",
              "--exllama-max-seq-len", "--exllama-gpu-split", "--exllama-cache-8bit", "--enable-xft",
              "--xft-max-seq-len", "--xft-dtype")
FLAGS = {
    "controller": ("--host", "--port", "--dispatch-method", "--ssl"),
    "model worker": ("--host", "--port", "--worker-address", "--controller-address", *MODEL_ARGS, "--model-names",
                     "--conv-template", "--embed-in-truncate", "--limit-worker-concurrency", "--stream-interval",
                     "--no-register", "--seed", "--debug", "--ssl"),
    "API server": ("--host", "--port", "--controller-address", "--allow-credentials", "--allowed-origins",
                   "--allowed-methods", "--allowed-headers", "--api-keys", "--ssl"),
    "cli": (*MODEL_ARGS, "--conv-template", "--conv-system-msg", "--temperature", "--repetition_penalty",
            "--max-new-tokens", "--no-history", "--style", "--multiline", "--mouse", "--judge-sent-end", "--debug"),
}


def _rows() -> list[tuple[set[str], set[str], str]]:
    """(flags, commands, where it lives) of each row of the table."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Migrating from FastChat"):]
    section = section[:section.index("\n## ", 3)]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0].startswith("`--"):
            rows.append((set(re.findall(r"`(--[a-z0-9_-]+)", cells[0])), set(cells[1].split(", ")), cells[2]))
    return rows


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_every_fastchat_flag_has_a_row_with_its_home(command: str) -> None:
    rows = _rows()
    for flag in FLAGS[command]:
        homes = [home for flags, commands, home in rows if flag in flags and command in commands]
        assert len(homes) == 1, f"{command} {flag}: {len(homes)} rows"
        assert len(homes[0]) > 10, f"{command} {flag}: the row does not say where it lives"
