"""The localize report on recorded EEG: PNG before/after, HTML viewer, timings.

    python -m benchmarks.studies.report_figures [--data ../shared/data/real_eeg]

Writes ``figures/localize_before.png`` (the previous layout: six small views
on one strip, drawn with ``plot_source_maps`` as ``localize`` did before),
``figures/localize_after.png`` (the current PNG), ``_work/localize.html``
and, where headless Chromium is installed, ``figures/localize_html.png`` (a
screenshot of the HTML page); then times ``unfolded-sbl localize`` on every
ERP CORE recording (default model, stc + png + csv + html, the template
forward model cached) and writes the ``report`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import mne

import unfolded_sbl as us
from benchmarks._results import HERE, write_study_section
from unfolded_sbl import cli
from unfolded_sbl.localize import (
    output_units,
    peak_report,
    peak_time_index,
    write_outputs,
)
from unfolded_sbl.viz import plot_source_maps

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_eeg"
#: P1 of the non-target letters (the second evoked of each ERP CORE file)
CONDITION, TMIN, TMAX = 1, 0.08, 0.16
MODEL = "deep-cb-joint"
OLD_VIEWS = tuple((h, v) for v in ("lateral", "medial", "posterior") for h in ("left", "right"))


def before_png(stc, fwd, fname, title):
    """The PNG as ``localize`` drew it before (one strip of six small views)."""
    t_peak = peak_time_index(stc)
    fig = plot_source_maps([stc.data[:, t_peak]], fwd, views=OLD_VIEWS, fname=None)
    fig.subplots_adjust(top=0.78)
    fig.suptitle(f"{title} t = {1e3 * stc.times[t_peak]:.0f} ms", fontsize=10, y=0.99)
    fig.savefig(fname, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)


def chromium():
    """Path of a headless-capable Chromium, or None."""
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


def screenshot(html, png, timeout=180):
    """Render ``html`` in headless Chromium (software WebGL) into ``png``; False
    where Chromium is not installed."""
    browser = chromium()
    if browser is None:
        return False
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
                    "--virtual-time-budget=10000", "--window-size=1200,900",
                    f"--screenshot={png}", Path(html).resolve().as_uri()],
                   check=True, timeout=timeout, capture_output=True)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    files = sorted((args.data / "erp_core_p3").glob("*_ave.fif"))
    if not files:
        raise SystemExit(f"no ERP CORE recordings under {args.data}")
    figures = HERE / "figures"
    figures.mkdir(exist_ok=True)
    evoked = mne.read_evokeds(files[0], condition=CONDITION, verbose=False)
    stc, fwd = us.apply(evoked, MODEL, tmin=TMIN, tmax=TMAX, return_forward=True)
    title = f"{files[0].name} (P1), {MODEL},"
    before_png(stc, fwd, figures / "localize_before.png", title)
    with tempfile.TemporaryDirectory() as tmp:
        write_outputs(stc, fwd, Path(tmp) / "after", formats=("png", "html"), title=title,
                      units=output_units(MODEL))
        shutil.copy(Path(tmp) / "after.png", figures / "localize_after.png")
        work = HERE / "_work"
        work.mkdir(exist_ok=True)
        shutil.copy(Path(tmp) / "after.html", work / "localize.html")  # 3.4 MB: not committed
    shot = screenshot(work / "localize.html", figures / "localize_html.png")
    top = peak_report(stc, fwd, n_peaks=1)[0]
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fname in files:
            start = time.perf_counter()
            code = cli.main(["localize", str(fname), "--condition", str(CONDITION), "--tmin",
                             str(TMIN), "--tmax", str(TMAX), "--formats", "stc", "png", "csv",
                             "html", "--out", str(Path(tmp) / fname.stem)])
            timings[fname.name] = time.perf_counter() - start
            if code != 0:
                raise SystemExit(f"localize failed on {fname}")
    rows = "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in timings.items())
    html_line = ("![HTML viewer, headless Chromium](figures/localize_html.png)" if shot else
                 "Headless Chromium was not installed: no screenshot of the HTML page.")
    body = f"""`python -m benchmarks.studies.report_figures`: `unfolded-sbl localize` on the ERP CORE
P1 of {files[0].name} ({MODEL}, {1e3 * TMIN:.0f}-{1e3 * TMAX:.0f} ms, baseline-corrected by
default). Top peak: {top['hemisphere']} {top['region']} ({top['x_mm']:.0f}, {top['y_mm']:.0f},
{top['z_mm']:.0f}) mm at {1e3 * top['time_s']:.0f} ms.

Before (six small views on a strip, no colour bar, no time courses):

![before](figures/localize_before.png)

After (large views, colour bar in nA m, the peaks' time courses at the map time):

![after](figures/localize_after.png)

Interactive page: `benchmarks/_work/localize.html` after a run (3.4 MB, not committed;
self-contained: the viewer's JavaScript and the meshes are inline, nothing is fetched).

{html_line}

Wall time of `unfolded-sbl localize` per recording (stc, png, csv and html; the
template forward model ships with the package, the process already warm):

| recording | seconds |
|---|---|
{rows}
"""
    write_study_section("report", "The localize report: PNG before/after, HTML viewer, timings",
                  body, {"timings_s": timings, "top_peak": top,
                         "screenshot": bool(shot)})
    print(body)


if __name__ == "__main__":
    main()
