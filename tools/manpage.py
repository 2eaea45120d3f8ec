"""Write the man page (roff) of `tmemfs` or `tmemctl` from what their --help prints now.

    python -m tools.manpage tmemfs > tmemfs.1
    python -m tools.manpage tmemctl > tmemctl.1

The commands are run (from the same venv as this interpreter), not copied, so a
man page can never say something --help does not: `make install` builds them.
tmemfs --help is already shaped like a man page (NAME, SYNOPSIS, ...); tmemctl's
argparse help becomes SYNOPSIS and DESCRIPTION, and every subcommand's own --help
(found in the `{a,b,...}` choices argparse prints) a subsection of COMMANDS.
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from fusefs import __version__

Section = tuple[str, list[str]]  # (title, body lines with the section's indentation removed)

ROW = re.compile(r"^(\s*)(\S.*?)\s{2,}(?=\S)")
CHOICES = re.compile(r"\{([a-z][a-z0-9,-]*)\}")


def command(name: str) -> str:
    """The program next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name) or name


def help_text(*args: str) -> str:
    done = subprocess.run([command(args[0]), *args[1:], "--help"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"manpage: {' '.join(args)} --help exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


# -- text to sections ------------------------------------------------------------------


def dedent(lines: Sequence[str], width: int) -> list[str]:
    """Remove up to `width` leading spaces from every line."""
    return [line[min(width, len(line) - len(line.lstrip(" "))):] for line in lines]


def man_sections(text: str) -> list[Section]:
    """Sections of a man-shaped text: titles at column 0, bodies (indented by 4) as they are."""
    sections: list[Section] = []
    for line in text.rstrip().splitlines():
        if line and not line[0].isspace():
            sections.append((line, []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def argparse_sections(text: str) -> tuple[list[str], list[str]]:
    """(synopsis lines, description lines) of an argparse --help."""
    lines = text.rstrip().splitlines()
    usage: list[str] = []
    while lines and (lines[0].startswith("usage:") or (usage and lines[0].startswith(" "))):
        usage.append(lines.pop(0).removeprefix("usage:").strip())
    while lines and not lines[0].strip():
        lines.pop(0)
    return usage, lines


# -- sections to roff ------------------------------------------------------------------


def escape(text: str) -> str:
    """Backslashes and minus signs as roff wants them (so options copy and paste as typed)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def paragraphs(lines: Sequence[str]) -> Iterator[list[str]]:
    block: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line.rstrip())
        elif block:
            yield block
            block = []


def table(block: Sequence[str]) -> list[tuple[str, str]] | None:
    """(term, description) rows if every line is a row or a continuation at one description column."""
    first = next((m for m in map(ROW.match, block) if m), None)
    if first is None:
        return None
    col = first.end()
    rows: list[tuple[str, str]] = []
    for i, line in enumerate(block):
        head, tail = line[:col], line[col:]
        if head.strip() and head.endswith(" ") and tail and not tail.startswith(" "):
            rows.append((head.rstrip(), tail))
        elif not head.strip() and tail and not tail.startswith(" ") and rows:
            rows[-1] = (rows[-1][0], f"{rows[-1][1]} {tail}".lstrip())
        elif len(line) >= col and i + 1 < len(block) and not block[i + 1][:col].strip():
            rows.append((line.rstrip(), ""))  # a long term; its description is on the next line
        else:
            return None
    return rows


def is_prose(block: Sequence[str]) -> bool:
    """Sentences at one indentation, ending with a full stop: fill them; anything else stays as laid out."""
    indents = {len(line) - len(line.lstrip()) for line in block}
    return len(indents) == 1 and not any("  " in line.strip() for line in block) and block[-1].endswith(".")


def roff_block(block: Sequence[str]) -> list[str]:
    rows = table(block)
    if rows is not None:
        out: list[str] = []
        for term, desc in rows:
            depth = len(term) - len(term.lstrip())
            out += [".TP", "\\ " * depth + "\\fB" + escape(term.strip()) + "\\fR", escape(desc)]
        return out
    if is_prose(block):
        return [escape(line.strip()) for line in block]
    return [".nf", *(escape(line) for line in block), ".fi"]


def roff_body(lines: Sequence[str]) -> list[str]:
    out: list[str] = []
    for block in paragraphs(lines):
        out += [".PP", *roff_block(block)]
    return out


def header(name: str) -> list[str]:
    date = datetime.date.today().isoformat()
    return [f'.TH {name.upper()} 1 "{date}" "tmemfs {__version__}" "User Commands"',
            f'.\\" Generated by tools/manpage.py from `{name} --help`; edit the help text, not this file.']


def tmemfs_page() -> str:
    out = header("tmemfs")
    for title, body in man_sections(help_text("tmemfs")):
        out += [".SH " + escape(title), *subsections(body)]
    return "\n".join(out) + "\n"


def subsections(body: list[str]) -> list[str]:
    """A line indented by 2 in a body indented by 4 (`  tmemfs options`) starts a subsection."""
    starts = [i for i, line in enumerate(body) if line.startswith("  ") and not line.startswith("   ")]
    out = roff_body(dedent(body[:starts[0]] if starts else body, 4))
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(body)
        out += [".SS " + escape(body[start].strip()), *roff_body(dedent(body[start + 1:end], 4))]
    return out


def tmemctl_page() -> str:
    import fusefs.tmemctl

    summary = (fusefs.tmemctl.__doc__ or "tmemctl").splitlines()[0].replace("`", "").rstrip(".")
    name, _, what = summary.partition(": ")
    main = help_text("tmemctl")
    usage, rest = argparse_sections(main)
    out = [*header("tmemctl"), ".SH NAME", f"{escape(name)} \\- {escape(what)}", ".SH SYNOPSIS", ".nf",
           *(escape(u) for u in usage), ".fi", ".SH DESCRIPTION", *argparse_body(rest)]
    match = CHOICES.search(main)
    subcommands = match.group(1).split(",") if match else []
    pages = [(sub, help_text("tmemctl", sub)) for sub in subcommands]
    pages = [(sub, text) for sub, text in pages if text != main]  # a subcommand without help of its own
    if pages:
        out.append(".SH COMMANDS")
    for sub, text in pages:
        sub_usage, sub_rest = argparse_sections(text)
        out += [".SS " + escape(f"tmemctl {sub}"), ".nf", *(escape(u) for u in sub_usage), ".fi",
                *argparse_body(sub_rest)]
    return "\n".join(out) + "\n"


def argparse_body(lines: Sequence[str]) -> list[str]:
    """argparse's `title:` lines at column 0 start subsections; their bodies are indented by 2."""
    out: list[str] = []
    chunk: list[str] = []
    title = ""
    for line in [*lines, "END:"]:
        if line and not line[0].isspace() and line.endswith(":"):
            if chunk or title:
                out += ([".SS " + escape(title)] if title else []) + roff_body(dedent(chunk, 2))
            title, chunk = line[:-1], []
        else:
            chunk.append(line)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    pages = {"tmemfs": tmemfs_page, "tmemctl": tmemctl_page}
    if len(args) != 1 or args[0] not in pages:
        print("usage: python -m tools.manpage tmemfs|tmemctl > NAME.1", file=sys.stderr)
        return 2
    sys.stdout.write(pages[args[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
