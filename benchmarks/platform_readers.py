"""Read time and peak memory of the Visium HD and Xenium readers on large vendor-layout fixtures.

    python benchmarks/platform_readers.py --hd-mm 5.6 --bin 8      # ~490k bins: an 8 um whole slide
    python benchmarks/platform_readers.py --hd-mm 2.0 --bin 8 --xenium-mm 2.0

The fixture (tests/fixtures_platforms.py, 130-gene panel, ~30 UMIs per 8 um bin) is written to a
temporary folder first; each read then runs in a fresh subprocess so its peak RSS (ru_maxrss) is the
reader's own (imports included: the baseline line shows what importing spagraph + scanpy costs).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHILD = r"""
import json, resource, sys, time
t = time.perf_counter()
kind, path, bin_um = sys.argv[1], sys.argv[2], float(sys.argv[3])
import scanpy, spagraph.io  # noqa  (imports are timed apart from the read)
t_imp = time.perf_counter()
if kind == "hd":
    from spagraph.io.visium_hd import read_visium_hd
    a = read_visium_hd(path, bin_um=int(bin_um))
elif kind == "xenium":
    from spagraph.io.xenium import read_xenium
    a = read_xenium(path, bin_um=bin_um)
else:
    a = None
t_end = time.perf_counter()
print(json.dumps({"kind": kind, "spots": a.n_obs if a is not None else 0, "genes": a.n_vars if a is not None else 0,
                  "nnz": int(a.X.nnz) if a is not None else 0, "read_s": round(t_end - t_imp, 2),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def child(kind: str, path: Path, bin_um: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), str(bin_um)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hd-mm", type=float, default=2.0, help="Visium HD capture side, mm (6.5 = full area)")
    ap.add_argument("--bin", type=int, default=8, help="Visium HD bin size to write and read (multiple of 8)")
    ap.add_argument("--xenium-mm", type=float, default=0.0, help="Xenium section side, mm (0: skip)")
    args = ap.parse_args()
    from fixtures_platforms import write_visium_hd, write_xenium
    rows = [child("baseline", Path("."), 0)]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        side = args.hd_mm * 1000
        t = time.perf_counter()
        tr = write_visium_hd(d / "hd" / "outs", extent_um=(side, side), bin_sizes=(args.bin,), image=False)
        print(f"wrote Visium HD fixture: {tr[args.bin]['n_bins']} bins of {args.bin} um in {time.perf_counter() - t:.0f} s",
              flush=True)
        rows.append(child("hd", d / "hd" / "outs", args.bin))
        if args.xenium_mm:
            xs = args.xenium_mm * 1000
            t = time.perf_counter()
            tx = write_xenium(d / "xe", extent_um=(xs, xs))
            print(f"wrote Xenium fixture: {len(tx['cells'])} cells in {time.perf_counter() - t:.0f} s", flush=True)
            rows.append(child("xenium", d / "xe", 50.0))
    print("| reader | spots | genes | nnz | read s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['spots']} | {r['genes']} | {r['nnz']} | {r['read_s']} | {r['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
