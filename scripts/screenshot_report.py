"""Render a report.html to a full-page PNG with headless Chromium.

    python scripts/screenshot_report.py runs/demo/report.html out.png [--width 1280]

The browser driver lives in cai.report.browser (the browser tests use it too).
"""

import sys

from cai.report.browser import main

if __name__ == "__main__":
    sys.exit(main())
