"""The HTML report of a run: `build_report(run_dir)` writes `runs/<name>/report.html`.

cai report runs/demo            # rebuild it
python scripts/screenshot_report.py runs/demo/report.html out.png
"""

from cai.report.build import build_report, render
from cai.report.inputs import RunInputs, load_run

__all__ = ["RunInputs", "build_report", "load_run", "render"]
