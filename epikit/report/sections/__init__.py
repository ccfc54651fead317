"""The report's sections, each rendered from whatever the run folder holds.

Every section is a function ``(report: ReportContext) -> Markup``. A section whose artefact
is missing returns a short "not available" note; it never fails because an earlier stage
did not run. User strings reach the page only through :mod:`epikit.report.html` (escaped)
and reach figure file names only through :func:`epikit.report.figures.safe_name`.
"""

from __future__ import annotations

from collections.abc import Callable

from epikit.report.html import Markup
from epikit.report.sections.biomarkers import biomarkers_section
from epikit.report.sections.classification import classification_section
from epikit.report.sections.common import ReportContext
from epikit.report.sections.crops import crops_section
from epikit.report.sections.explanation import explanation_section
from epikit.report.sections.overview import inputs_section, overview, warnings_section
from epikit.report.sections.profiles import profiles_section
from epikit.report.sections.segmentation import segmentation_section
from epikit.report.sections.shells import shells_section

#: (anchor, navigation label, title, section function) in page order; the warnings
#: section is placed second but rendered last (it lists the other sections' problems).
SECTIONS: tuple[tuple[str, str, str, Callable[[ReportContext], Markup]], ...] = (
    ("overview", "Overview", "Overview", overview),
    ("inputs", "Inputs", "Inputs and parameters", inputs_section),
    ("segmentation", "Segmentation", "Segmentation", segmentation_section),
    ("crops", "Crops", "Example crops", crops_section),
    ("classification", "Classification", "Classification", classification_section),
    ("explanation", "Explanations", "Explanation maps", explanation_section),
    ("shells", "Shell profiles", "Shell profiles", shells_section),
    ("radial", "Radial profiles", "Radial profiles: where in the nucleus", profiles_section),
    ("biomarkers", "Biomarkers", "Findings and biomarkers", biomarkers_section),
)

__all__ = ["SECTIONS", "ReportContext", "warnings_section"]
