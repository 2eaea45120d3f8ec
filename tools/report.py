"""What the benchmarks write: progress on stderr, numbers as BENCHMARKS.md shows them (medians with ranges,
ratios, markdown tables), the marked section each program owns, charts, and the saved numbers a report is redrawn
from (--from-json)."""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from tools.fio import Matrix, Point
from tools.machine import BUSY

MiB = 1 << 20
CHART_DIR = Path("docs/bench")  # relative to the report's directory
R = TypeVar("R")  # a program's report


# -- progress ----------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress goes to stderr, headed by the program's name, so that stdout stays clean."""
    print(f"[{Path(sys.argv[0]).stem} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mmss(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """n of N steps on stderr, with the time elapsed and an estimate of what is left: from the steps measured so
    far, or `per_step_s` before the first."""

    def __init__(self, total: int, per_step_s: float = 0.0) -> None:
        self.total, self.per_step_s, self.t0 = total, per_step_s, time.monotonic()
        self.done = 0  # steps begun or finished
        self.measured = 0  # of them, those whose time counts (a skipped point costs nothing)

    def step(self, message: str, ran: bool = True) -> None:
        """A step just done (`ran`: it measured something)."""
        self.done += 1
        self.measured += ran
        self._log(message, self.total - self.done)

    def begin(self, message: str) -> None:
        """A step about to start: the estimate covers it and the rest."""
        self.done += 1
        self._log(message, self.total - self.done + 1)
        self.measured += 1

    def _log(self, message: str, remaining: int) -> None:
        elapsed = time.monotonic() - self.t0
        per = elapsed / self.measured if self.measured else self.per_step_s
        log(f"[{self.done}/{self.total} {self.done / max(1, self.total):.0%}, {mmss(elapsed)} elapsed"
            + (f", ~{mmss(per * remaining)} left" if per else "") + f"] {message}")


# -- numbers -----------------------------------------------------------------------------------------------------


def human(size: int) -> str:
    """16777216 -> 16M (the largest unit that divides the size)."""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def spread(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(median, min, max), or None without values."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))])


def spread_text(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """'median (min..max)' when repeated, the value alone otherwise."""
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) == 1 or min(values) == max(values):
        return med
    return f"{med} ({fmt.format(min(values))}..{fmt.format(max(values))})"


def fmt_iops(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def fmt_point(values: Sequence[float], scale: float = 1.0, iops: bool = True) -> str:
    s = spread([v / scale for v in values])
    if s is None:
        return "-"
    f = fmt_iops if iops else (lambda v: f"{v:.0f}")
    return f"{f(s[0])} ({f(s[1])}..{f(s[2])})" if len(values) > 1 else f(s[0])


def median_iops(point: Point | None) -> float | None:
    return statistics.median(point.iops()) if point and point.iops() else None


def cell(point: Point | None, iops: bool = True) -> str:
    """A point's median (min..max), IOPS or MiB/s; a failure said as such, † where others kept the machine busy."""
    if point is None:
        return "-"
    if point.failed:
        return "**crashed**" if point.crashed else "**failed**"
    text = fmt_point(point.iops(), iops=True) if iops else fmt_point(point.bw(), scale=MiB, iops=False)
    return text + (" †" if point.busy() else "")


@dataclass(frozen=True)
class Ratio:
    """subject/baseline IOPS: ratio of the medians, and the range of per-round ratios."""

    median: float
    lo: float
    hi: float

    def meets(self, target: float) -> bool:
        return self.median >= target

    def __str__(self) -> str:
        return f"{self.median:.2f}x" + (f" ({self.lo:.2f}..{self.hi:.2f})" if self.lo != self.hi else "")


def ratio(subject: Point, baseline: Point) -> Ratio | None:
    """None when either side has no successful run (e.g. the example crashed)."""
    if baseline.failed or not baseline.by_round or not subject.by_round:
        return None
    med = statistics.median(subject.iops()) / statistics.median(baseline.iops())
    pairs = [subject.by_round[r].iops / baseline.by_round[r].iops
             for r in subject.by_round if r in baseline.by_round and baseline.by_round[r].iops > 0]
    return Ratio(med, min(pairs, default=med), max(pairs, default=med))


def point_ratio(points: dict[tuple[str, str], Point], subject: tuple[str, str],
                base: tuple[str, str]) -> Ratio | None:
    sp, bp = points.get(subject), points.get(base)
    return ratio(sp, bp) if sp is not None and bp is not None else None


def plain_ratio(points: dict[tuple[str, str], Point], subject: str, base: str, job: str) -> str:
    """'1.23x (1.10..1.30)' of two configurations' points of a job, or why there is none."""
    for key in (base, subject):
        p = points.get((key, job))
        if p is None or (not p.failed and not p.by_round):
            return "-"
        if p.failed:
            return f"n/a ({key} {'crashed' if p.crashed else 'failed'})"
    r = point_ratio(points, (subject, job), (base, job))
    return "-" if r is None else str(r)


def noise_lines(matrix: Matrix, what: str = "") -> list[str]:
    """How much of the machine others used while fio ran (from /proc/stat minus fio's and the daemon's CPU)."""
    runs = matrix.runs()
    if not runs:
        return []
    foreign = [r.foreign_cpu or 0.0 for r in runs]
    steal = [r.steal or 0.0 for r in runs]
    busy = sum(f > BUSY for f in foreign)
    where = f" ({what})" if what else ""
    return [f"* CPU used by other processes during each run{where} (machine busy time from /proc/stat minus the "
            f"CPU time of fio and of the daemon under test, in CPUs): median {statistics.median(foreign):.0%}, "
            f"max {max(foreign):.0%}; hypervisor steal: median {statistics.median(steal):.0%}, "
            f"max {max(steal):.0%}. † marks a point with a run where others used more than {BUSY:.0%} of a "
            f"CPU ({busy} of {len(runs)} runs, after {matrix.retried} busy runs were measured again at the end "
            f"and {matrix.replaced} of them replaced by the quieter re-run)."]


# -- markdown ----------------------------------------------------------------------------------------------------


def verdict_line(result: str, label: str, measured: str, why: str = "") -> str:
    """A target as a program prints it on stdout: MET, MISSED or n/a first."""
    return f"{result:7} {label}: {measured}" + (f" ({why})" if why else "")


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def facts_table(facts: dict[str, str]) -> list[str]:
    """A two-column table without a header: the machine, the versions."""
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in facts.items()]]


def subsection(title: str, lines: list[str]) -> list[str]:
    """A heading and its lines, or nothing when there are none."""
    return [title, "", *lines, ""] if lines else []


def machine_lines(machine: dict[str, str], versions: dict[str, str]) -> list[str]:
    """The section's last table: where it ran, with what."""
    return ["### Machine and versions", "", *facts_table({**machine, **versions}), ""]


def markdown(lines: Iterable[str]) -> str:
    """The lines as one text, never two blank lines in a row, ending with one newline."""
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip("\n") + "\n"


def grouped_commands(title: str, matrix: Matrix) -> list[str]:
    """The command lines of one part in code blocks, one per set of configurations that ran them."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for cmd, users in matrix.commands.items():
        groups.setdefault(tuple(users), []).append(cmd)
    lines: list[str] = []
    for keys, cmds in groups.items():
        lines += [f"{title}, on {', '.join(keys)}:", "", "```", *cmds, "```", ""]
    return lines


def placeholders(text: str, paths: dict[str, str]) -> str:
    """A run's paths written as their names (SRC, MNT, ...), so commands read the same on every machine."""
    for name, path in sorted(paths.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(path, name)
    return text


# -- the sections of BENCHMARKS.md ---------------------------------------------------------------------------------


def markers(section: str) -> tuple[str, str]:
    """What a program's section is written between."""
    return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"


def replace_between(text: str, body: str, begin: str, end: str) -> str:
    """Replace only what is between the markers; append the markers if absent."""
    if begin in text and end in text and text.index(begin) < text.index(end):
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        return f"{head}{begin}\n{body}{end}{tail}"
    sep = "" if not text or text.endswith("\n") else "\n"
    return f"{text}{sep}\n{begin}\n{body}{end}\n"


def write_section(out: Path, body: str, begin: str, end: str) -> None:
    """Write `body` between the markers of `out`, keeping the rest of the file."""
    text = out.read_text() if out.exists() else ""
    out.write_text(replace_between(text, body, begin, end))


def write_head(out: Path, text: str, first_section: str) -> None:
    """Replace everything before the first section's markers (the rest is other programs')."""
    begin, end = markers(first_section)
    old = out.read_text() if out.exists() else ""
    if begin in old and end in old:
        text = text.rstrip("\n") + "\n\n" + old[old.index(begin):]
    out.write_text(text)


def publish(out: Path, section: str, text: str, elapsed_s: float, stdout: Iterable[str],
            chart: Path | None = None) -> int:
    """Write a program's section, say so on stderr and its verdicts on stdout: the exit status."""
    write_section(out, text, *markers(section))
    log(f"wrote the {section} section of {out}" + (f" and {chart}" if chart else "")
        + f" (run took {mmss(elapsed_s)})")
    for line in stdout:
        print(line)
    return 0


# -- charts ------------------------------------------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib's pyplot, drawing into files only; imported when a chart is drawn (it is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, rect: tuple[float, float, float, float] | None = None) -> None:
    """Small PNGs (dpi 80), so each stays well under 150 KB."""
    fig.tight_layout(rect=rect)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    pyplot().close(fig)


def draw_chart(out: Path, name: str, draw: Callable[[Path], bool]) -> tuple[Path | None, str | None]:
    """A section's chart in docs/bench/ beside the report: (its path, its link in the report), both None when
    there was nothing to draw."""
    path = out.resolve().parent / CHART_DIR / name
    return (path, f"{CHART_DIR.as_posix()}/{name}") if draw(path) else (None, None)


def bar_groups(ax: Any, groups: Sequence[str], series: dict[str, list[float]]) -> None:
    """Grouped bars: one group per x label, one bar per series."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(groups)), groups)


# -- the command line and the saved numbers ------------------------------------------------------------------------


def section_parser(prog: str, doc: str | None, quick: str) -> argparse.ArgumentParser:
    """The command line of a program that writes a section, with its --quick; the program adds the others
    (add_output_options(), its own, add_from_json())."""
    parser = argparse.ArgumentParser(prog=f"python -m tools.{prog}", description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def add_output_options(parser: argparse.ArgumentParser, section: str, results_dir: Path, workspace: str) -> None:
    """--out (the report, of which only the section is written) and --results-dir (what the run keeps)."""
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"),
                        help=f"report file; only the {section} section is written (default BENCHMARKS.md)")
    parser.add_argument("--results-dir", type=Path, default=results_dir, help=workspace)


def add_from_json(parser: argparse.ArgumentParser, does: str = "write the section from a saved report.json",
                  metavar: str = "REPORT_JSON") -> None:
    parser.add_argument("--from-json", type=Path, metavar=metavar, help=f"measure nothing: {does}")


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def measured_or_loaded(args: argparse.Namespace, measure: Callable[[argparse.Namespace], R],
                       dump: Callable[[R], dict[str, Any]], load: Callable[[dict[str, Any]], R],
                       saved: Path) -> R | None:
    """The report of --from-json, or of a run whose numbers are then saved in `saved`; None when interrupted
    (SIGTERM too: everything is undone first)."""
    if args.from_json:
        return load(json.loads(args.from_json.read_text()))
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        report = measure(args)
    except KeyboardInterrupt:
        log("interrupted: everything is unmounted and stopped, no report written")
        return None
    saved.write_text(json.dumps(dump(report), indent=1))
    log(f"numbers saved in {saved} (--from-json {saved} redraws the report)")
    return report


def run_json(results_dir: Path, quick: bool) -> Path:
    """Where a run under `results_dir` saves its numbers: a quick run never overwrites those of a full one."""
    return results_dir.resolve() / "run" / ("report-quick.json" if quick else "report.json")
