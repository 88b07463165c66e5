"""The shell blocks of the docs' Get started pages and how-to guides, as the commands a reader
types: ```bash blocks only (```text blocks are output, sketches, or commands no test can run
here, and each page says which). Continuation lines are joined and comments dropped."""

from __future__ import annotations

import glob
import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "get-started", "*.md"))
               + glob.glob(os.path.join(ROOT, "docs", "how-to", "*.md")))

# What the placeholders of the cloud pages stand for against the stand-in (tests/cloud/standin.py).
PLACEHOLDERS = {"PROJECT": "tlp-test", "REGION": "us-central1", "BUCKET": "tlp-bucket"}
CLOUD_COMMANDS = ("submit", "schedule", "deploy")


def page_name(path: str) -> str:
    return os.path.relpath(path, os.path.join(ROOT, "docs"))


def bash_blocks(path: str) -> list[str]:
    text = open(path, encoding="utf-8").read()
    return re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)


def commands(block: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", block)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            found.append(re.split(r"\s+#\s", line)[0].strip())
    return found


def all_blocks() -> list[tuple[str, int, str]]:
    """(page, index of the block on its page, the block) for every bash block."""
    return [(page_name(path), index, block) for path in PAGES for index, block in enumerate(bash_blocks(path))]


def kind(command: str) -> str:
    """How a test runs the command: "tlp-cloud" (against the stand-in), "tlp-docker" (needs an
    engine and the images), "tlp" (locally), "make",
    "assign" (a shell variable the next lines use), or the program's name."""
    if re.match(r"^[A-Z_]+=\S+$", command):
        return "assign"
    words = shlex.split(command)
    if words[0] == "tlp":
        if words[1] in CLOUD_COMMANDS or "--batch-job" in words:
            return "tlp-cloud"
        if "--runner" in words and words[words.index("--runner") + 1] == "docker":
            return "tlp-docker"
        return "tlp"
    return words[0]


def fill(command: str, variables: dict[str, str]) -> list[str]:
    """The command's words with the placeholders and shell variables filled in."""
    for name, value in variables.items():
        command = command.replace(f"${name}", value)
    words = shlex.split(command)
    return [_placeholders(word) for word in words]


def _placeholders(word: str) -> str:
    for name, value in PLACEHOLDERS.items():
        word = re.sub(rf"\b{name}\b", value, word)
    return word
