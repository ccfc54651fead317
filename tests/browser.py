"""Open an HTML report in headless Chromium and return the DOM after load (shared by the report tests).

A copy of the page beside it gets a small instrumentation script: it records each image's
naturalWidth after load and turns alert() into a DOM attribute. The copy keeps the page's
Content-Security-Policy except that inline scripts are allowed, so a check relies on the
escaping, not on the policy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

POLICY = "default-src &#x27;none&#x27;;"
PROBE = ("<script>window.alert=function(m){document.documentElement.setAttribute('data-alerted',String(m))};"
         "window.addEventListener('load',function(){for(const i of document.images){"
         "i.setAttribute('data-width',String(i.complete?i.naturalWidth:0))}"
         "document.documentElement.setAttribute('data-checked',String(document.images.length))})</script>")


def chromium() -> str | None:
    """The Chromium executable, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(page: Path, profile: Path) -> str:
    """Load ``page`` (instrumented copy, removed afterwards) in headless Chromium and return its DOM
    after load, checking that every image loaded and no alert() ran."""
    text = page.read_text(encoding="utf-8")
    assert POLICY in text, "the page lost its Content-Security-Policy"
    harness = text.replace(POLICY, POLICY + " script-src &#x27;unsafe-inline&#x27;;", 1).replace("<head>", "<head>" + PROBE, 1)
    copy = page.with_name("browser-check.html")
    copy.write_text(harness, encoding="utf-8")
    try:
        result = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
             copy.as_uri()], capture_output=True, text=True, timeout=90)
    finally:
        copy.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    checked = re.search(r'data-checked="(\d+)"', dom)
    assert checked is not None, "the page's load handler did not run"
    widths = re.findall(r'<img[^>]*data-width="(\d+)"', dom)
    assert len(widths) == int(checked.group(1)) == text.count("<img "), (len(widths), checked.group(1))
    assert all(int(w) > 0 for w in widths), widths  # every image loaded
    assert 'data-alerted="' not in dom  # nothing from user data ran as script
    return dom
