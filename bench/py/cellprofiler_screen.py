"""screen_cellprofiler's peer: `arraybridge screen`'s pipeline built from CellProfiler's own
module functions (PyPI cellprofiler-library-nightly), run one process per core as CellProfiler's
headless batch mode runs a plate (`cellprofiler -c -r -f FIRST -l LAST` per process).

    cellprofiler_screen.py PLATE_DIR OUT_CSV [--processes N] [--filter-size PX]
                           [--rescale LO,HI] [--min-size PX]

PLATE_DIR holds `make-plate`'s simple layout (WELL_sSITE.tif, z as pages). Per image:
  LoadImages           tifffile, uint16 scaled to [0, 1] as CellProfiler loads 16-bit images
  MakeProjection       maximum over the planes
  Smooth               Gaussian filter, object size PX (sigma = PX / 2.35)
  RescaleIntensity     "Choose specific values to be reset to the full intensity range", the
                       values being the image's LO and HI percentiles (nearest rank, as ours)
  IdentifyPrimaryObjects
                       global two-class Otsu, no threshold smoothing, no declumping, holes not
                       filled, objects touching the border kept, objects under PX pixels of area
                       dropped (CellProfiler's minimum diameter 2 sqrt(PX / pi))
  MeasureObjectSizeShape
                       area (for the mean area)
Writes OUT_CSV (well,site,objects,mean_area) and prints "peer_images_per_s V" (images over the
wall time of the timed map, after one warm-up image per process), "peer_processes N" and the
versions.
"""
import argparse
import math
import multiprocessing as mp
import os
import re
import sys
import time

import numpy as np
import tifffile
from cellprofiler_library.modules import identifyprimaryobjects, measureobjectsizeshape
from cellprofiler_library.modules._makeprojection import makeprojection
from cellprofiler_library.modules._rescaleintensity import rescale_intensity
from cellprofiler_library.modules._smooth import smooth
from cellprofiler_library.opts.identifyprimaryobjects import FillHolesMethod, UnclumpMethod, WatershedMethod
from cellprofiler_library.opts.makeprojection import ProjectionType
from cellprofiler_library.opts.rescaleintensity import (MaximumIntensityMethod, MinimumIntensityMethod,
                                                        RescaleMethod)
from cellprofiler_library.opts.smooth import SmoothingMethod
import cellprofiler_library.opts.threshold as T

ARGS = None


def percentile(values, per_mille):
    """The smallest value whose cumulative count exceeds n * p / 1000 (our rule)."""
    flat = np.sort(values, axis=None)
    return float(flat[min(flat.size * per_mille // 1000, flat.size - 1)])


def one_image(path):
    planes = tifffile.imread(path).astype(np.float64) / 65535.0
    planes = planes.reshape((-1,) + planes.shape[-2:])
    acc = makeprojection(ProjectionType.MAXIMUM, planes[0])
    for plane in planes[1:]:
        acc = acc.accumulate(plane, None)
    projection, _ = acc.finalize()
    if ARGS.filter_size > 0:
        smoothed = smooth(projection, np.ones(projection.shape, bool), False, ARGS.filter_size, SmoothingMethod.GAUSSIAN_FILTER, None)
    else:
        smoothed = projection
    lo, hi = percentile(smoothed, ARGS.p_lo), percentile(smoothed, ARGS.p_hi)
    hi = hi if hi > lo else lo + 1.0 / 65535
    rescaled = rescale_intensity(
        RescaleMethod.MANUAL_INPUT_RANGE, smoothed, np.ones(smoothed.shape, bool), False, False, 1.0,
        MaximumIntensityMethod.CUSTOM_VALUE, MinimumIntensityMethod.CUSTOM_VALUE, 1.0, 0.0, lo, hi, None, None,
        None, None, None, None)
    min_diameter = round(2 * math.sqrt(ARGS.min_size / math.pi))  # an integer setting in CellProfiler
    labels = identifyprimaryobjects(
        rescaled, threshold_method=T.Method.OTSU, threshold_scope=T.Scope.GLOBAL, threshold_smoothing=0.0,
        exclude_size=True, min_size=min_diameter, max_size=1e6, exclude_border_objects=False,
        unclump_method=UnclumpMethod.NONE, watershed_method=WatershedMethod.NONE,
        fill_holes_method=FillHolesMethod.NEVER)
    count = int(labels.max())
    area = 0.0
    if count:
        shape = measureobjectsizeshape(labels[None, None, None, None], "Nuclei", calculate_advanced=False,
                                       calculate_zernikes=False)
        areas = np.asarray(shape.get_measurement("Nuclei", "AreaShape_Area"), dtype=float)
        area = float(areas.mean())
    m = re.match(r"([A-Za-z]+\d+)_s(\d+)", os.path.basename(path))
    return m.group(1), int(m.group(2)), count, area


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("plate")
    ap.add_argument("out")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--filter-size", type=float, default=3.0)
    ap.add_argument("--rescale", default="1,99.9")
    ap.add_argument("--min-size", type=int, default=20)
    ARGS = ap.parse_args()
    lo, hi = (float(x) for x in ARGS.rescale.split(","))
    ARGS.p_lo, ARGS.p_hi = round(lo * 10), round(hi * 10)
    files = sorted(os.path.join(ARGS.plate, f) for f in os.listdir(ARGS.plate) if f.lower().endswith((".tif", ".tiff")))
    if not files:
        sys.exit(f"no TIFFs in {ARGS.plate}")
    with mp.get_context("fork").Pool(ARGS.processes) as pool:
        pool.map(one_image, files[:ARGS.processes], chunksize=1)  # warm-up: every process imported and ran once
        t0 = time.perf_counter()
        rows = pool.map(one_image, files, chunksize=1)
        secs = time.perf_counter() - t0
    with open(ARGS.out, "w") as f:
        f.write("well,site,objects,mean_area\n")
        for well, site, count, area in rows:
            f.write(f"{well},{site},{count},{area:.2f}\n")
    import importlib.metadata as md
    print("peer_images_per_s", len(files) / secs)
    print("peer_processes", ARGS.processes)
    print("peer_version cellprofiler-library-nightly-" + md.version("cellprofiler-library-nightly"))


if __name__ == "__main__":
    main()
