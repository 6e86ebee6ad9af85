"""Prints the Nth fenced command of README.md's "## Quick start" section."""

import re
import sys


def quick_start_commands(text):
    section = text.split("## Quick start", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    return [block.strip() for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", section, re.S)]


if __name__ == "__main__":
    path, n = sys.argv[1], int(sys.argv[2])
    with open(path, encoding="utf-8") as f:
        print(quick_start_commands(f.read())[n - 1])
