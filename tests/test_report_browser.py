"""report.html in a real browser (headless Chromium, where installed): nothing reaches
past the window's right edge at the widths people read it at."""

import os
import re
import shutil
import subprocess

import pytest

from test_pipeline import _args, tiny_npz  # noqa: F401  (fixture: 400 28x28 images)
from test_report import _ledger, _make_run, _record
from vpntk_jax import cli
from vpntk_jax import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install "
                                                         "chromium)")

# Appended to a copy of the page: the widest thing on it against the window, written
# into the DOM that --dump-dom prints (after the page's own layout).
_PROBE = """<script>
const right = Math.max(...Array.from(document.querySelectorAll('body *'),
                                     e => e.getBoundingClientRect().right));
const p = document.createElement('pre');
p.textContent = 'PROBE ' + document.documentElement.scrollWidth + ' ' +
                Math.ceil(right) + ' ' + window.innerWidth;
document.body.appendChild(p);
</script>"""


def _measure(page: str, tmp_path, width: int) -> tuple[int, int, int]:
  """(document scroll width, rightmost element edge, window width) of `page` in Chromium."""
  probe = tmp_path / f"probe_{width}.html"
  probe.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
  done = subprocess.run(
      [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
       f"--window-size={width},900", "--dump-dom", probe.as_uri()],
      capture_output=True, text=True, timeout=120, check=False)
  found = re.search(r"PROBE (\d+) (\d+) (\d+)", done.stdout)
  assert found, done.stdout[-2000:] + done.stderr[-2000:]
  return tuple(int(v) for v in found.groups())


def _long_run(tmp_path) -> str:
  """A report with a wide release table: several releases with long names and full
  digests, an over-budget warning."""
  records = [_record(f"labelled_mean_embedding_{i}", sha256=f"{i:x}" * 64) for i in range(3)]
  return _make_run(tmp_path / "run", ledger=_ledger(*records, accountant="pld"))


@pytest.mark.parametrize("width", [1200, 800])
def test_report_html_fits_the_window(tmp_path, width):
  run = _long_run(tmp_path)
  report.write_report(run)
  with open(os.path.join(run, "report.html"), encoding="utf-8") as f:
    page = f.read()
  scroll, right, window = _measure(page, tmp_path, width)
  assert window == width
  assert scroll <= window and right <= window, (scroll, right, window)


def test_a_tiny_run_s_report_fits_the_window(tiny_npz, tmp_path):  # noqa: F811
  # A real run, short enough that its loss log is one or two steps.
  out = tmp_path / "run"
  argv = _args(tiny_npz, out, "--steps", "2", "--checkpoint-every", "1",
               "--classifiers", "logistic_regression")
  assert cli.main(argv) == 0
  with open(out / "report.html", encoding="utf-8") as f:
    page = f.read()
  assert "FID was not computed" in page
  for width in (1200, 800):
    scroll, right, window = _measure(page, tmp_path, width)
    assert scroll <= window and right <= window, (width, scroll, right)


def test_the_probe_sees_an_overflow(tmp_path):
  # The measurement itself can fail: a fixed-width block wider than the window.
  page = "<!DOCTYPE html><html><body><div style='width:1500px'>x</div></body></html>"
  scroll, right, window = _measure(page, tmp_path, 1200)
  assert scroll > window and right > window
