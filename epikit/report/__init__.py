"""The run report: one self-contained ``report.html`` with PNG figures in ``figures/``.

:func:`run` is the report stage (the pipeline and ``epikit report`` call it);
``build_report(run_dir)`` renders every section from whatever the run folder holds (a
missing artefact gives a short note, never an error), escapes every string that comes
from user data, and writes atomically: figures go into a temporary folder that replaces
``figures/`` in one rename, then ``report.html`` is written through a temporary file.
The page has no scripts and no external resources, so it opens offline.
"""

from __future__ import annotations

import datetime as _datetime
import os
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epikit.io.store import atomic_path
from epikit.options import ReportOptions
from epikit.runfolder.layout import FIGURES as FIGURES_DIR
from epikit.runfolder.layout import REPORT as REPORT_FILE

if TYPE_CHECKING:  # pragma: no cover
    from epikit.distributed import Executor

__all__ = ["FIGURES_DIR", "REPORT_FILE", "build_report", "render_report", "run"]


def render_report(run_dir: str | os.PathLike[str], figures_dir: str | os.PathLike[str],
                  *, strict: bool = False) -> str:
    """Render the report page for ``run_dir``, writing its PNG figures into ``figures_dir``.

    Returns the HTML text (figure links are ``figures/<name>.png``). A section that fails
    on malformed data is replaced by a note and listed under Warnings (``strict=True``
    raises instead).
    """
    from epikit.errors import EpikitError
    from epikit.report.figures import FigureWriter
    from epikit.report.html import Markup, document, element, section, warning
    from epikit.runfolder.reader import RunFolder
    from epikit.report.sections import SECTIONS, ReportContext, warnings_section

    context = ReportContext(RunFolder(run_dir), FigureWriter(Path(figures_dir), FIGURES_DIR))

    def guarded(title: str, build: Callable[[ReportContext], Markup]) -> Markup:
        try:
            return build(context)
        except Exception as error:  # one broken artefact must not lose the whole report
            if strict:
                raise
            message = f"The {title} section could not be rendered: {type(error).__name__}: {error}"
            warnings.warn(f"{message}\n{traceback.format_exc()}", stacklevel=3)
            context.warnings.append(warning(message))
            return element("p", message, class_="note")

    rendered = [(anchor, label, section(anchor, title, guarded(title, build)))
                for anchor, label, title, build in SECTIONS]
    # Warnings come second on the page but last in the work: they list the failures above.
    rendered.insert(1, ("warnings", "Warnings", section("warnings", "Warnings",
                                                        guarded("Warnings", warnings_section))))
    try:
        version = context.run.manifest.get("epikit")
    except EpikitError:
        version = None  # the Inputs section already reports the unreadable manifest
    stamp = _datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M")
    subtitle = f"Run folder {context.run.path.resolve().name} - report generated {stamp}" + (
        f" by epikit {version}" if version else "")
    return document("epikit run report", subtitle, rendered)


def build_report(run_dir: str | os.PathLike[str], *, strict: bool = False) -> Path:
    """Write ``run_dir/report.html`` and ``run_dir/figures/``; return the report's path.

    Works on partial run folders (each missing artefact is noted in its section). Both
    outputs are replaced atomically, so an interrupted build leaves the previous report.
    """
    run_dir = Path(run_dir)
    from epikit.runfolder.reader import RunFolder

    RunFolder(run_dir)  # a clear InputError when the folder does not exist
    with atomic_path(run_dir / FIGURES_DIR) as figures_tmp:
        text = render_report(run_dir, figures_tmp, strict=strict)
    report = run_dir / REPORT_FILE
    with atomic_path(report) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return report


def run(
    run_dir: str | os.PathLike[str],
    options: ReportOptions,
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The report stage: :func:`build_report` unless ``options.enabled`` is false; the summary."""
    if not options.enabled:
        return {"skipped": True}
    return {"path": str(build_report(run_dir))}
