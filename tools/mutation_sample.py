"""Sampled mutation testing of spagraph's learning code (cosmic-ray), cheap enough for a small machine.

A full cosmic-ray session over spagraph/experiment, train, embed and nn holds thousands of
mutants; each needs a test run. This script keeps a fixed, reproducible sample: the ``--n``
mutants whose key (module, operator, text of the mutated line, column, repeat of that line)
hashes lowest, so the same mutants are drawn again after unrelated edits elsewhere. It copies
the working tree (tracked + untracked, not ignored) to ``OUT/src``, mutates only that copy, runs
``--tests`` per mutant (``pytest -x``, timeout per mutant) and prints the score and survivors.

    python tools/mutation_sample.py --out runs/mutation --n 36
    python tools/mutation_sample.py --out runs/mutation --n 36 --tests "tests/test_nn.py ..."

Needs ``pip install cosmic-ray`` (in the ``dev`` extra). Survivors are written to
``OUT/survivors.txt`` with their diffs; ``OUT/summary.json`` holds the score.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ["spagraph/experiment", "spagraph/train", "spagraph/embed", "spagraph/nn"]
DEFAULT_TESTS = ("tests/test_nn.py tests/test_thresholds.py tests/test_embed_gene.py tests/test_config.py "
                 "tests/test_predict.py tests/test_graph.py tests/test_properties.py tests/test_runner.py "
                 "tests/test_blind_spots.py")
DESELECT = ("not her2st_one_fold and not resume_after_kill and not synthetic_end_to_end and not minilm "
            "and not same_seed and not cli_run_threads")


def copy_tree(repo: Path, dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    if dst.exists():
        shutil.rmtree(dst)
    for f in files:
        src = repo / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def stable_key(item, src: Path) -> str:
    m = item.mutations[0]
    lines = (src / m.module_path).read_text().splitlines()
    line = lines[m.start_pos[0] - 1]
    repeat = sum(1 for l in lines[: m.start_pos[0] - 1] if l == line)
    key = f"{m.module_path}|{m.operator_name}|{m.operator_args}|{line.strip()}|{m.start_pos[1] - (len(line) - len(line.lstrip()))}|{repeat}"
    return key


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/mutation"))
    ap.add_argument("--n", type=int, default=36, help="mutants in the sample")
    ap.add_argument("--tests", default=DEFAULT_TESTS, help="test files run against each mutant")
    ap.add_argument("--deselect", default=DESELECT, help="pytest -k expression (slow tests left out)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--list-only", action="store_true", help="print the sample and stop")
    args = ap.parse_args()

    from cosmic_ray.commands.init import _all_work_items
    from cosmic_ray.work_db import WorkDB, use_db

    out = args.out.resolve()
    src = out / "src"
    out.mkdir(parents=True, exist_ok=True)
    copy_tree(args.repo, src)
    tests = " ".join(t for t in args.tests.split() if (src / t).exists())
    cmd = (f"{sys.executable} -m pytest -x -q -p no:cacheprovider -m 'not realdata and not slow' "
           f"-k '{args.deselect}' {tests}")
    mods = sorted(str(p) for pkg in PACKAGES for p in (src / pkg).rglob("*.py"))
    mods = [str(Path(m).relative_to(src)) for m in mods]
    cfg = out / "cosmic-ray.toml"
    cfg.write_text("[cosmic-ray]\n"
                   f"module-path = {json.dumps(mods)}\n"
                   f"timeout = {args.timeout}\n"
                   "excluded-modules = []\n"
                   f"test-command = {json.dumps(cmd)}\n\n"
                   "[cosmic-ray.distributor]\nname = \"local\"\n")
    import os
    os.chdir(src)
    items = list(_all_work_items([Path(m) for m in mods], {}))
    keys, seen = [], {}
    for it in items:          # several mutants at one position (NumberReplacer +1 / -1): numbered apart
        k = stable_key(it, src)
        seen[k] = seen.get(k, -1) + 1
        keys.append(hashlib.sha1(f"{k}|{seen[k]}".encode()).hexdigest())
    ranked = [it for _, it in sorted(zip(keys, items), key=lambda t: t[0])]
    sample = ranked[: args.n]
    print(f"{len(items)} mutants in {', '.join(PACKAGES)}; sampled {len(sample)}")
    for it in sample:
        m = it.mutations[0]
        print(f"  {m.module_path}:{m.start_pos[0]} {m.operator_name}")
    if args.list_only:
        return 0
    session = out / "session.sqlite"
    session.unlink(missing_ok=True)
    with use_db(str(session), WorkDB.Mode.create) as db:
        db.clear()
        db.add_work_items(sample)
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    base = subprocess.run(cmd, shell=True, cwd=src, env=env, capture_output=True, text=True)
    if base.returncode != 0:
        print("the test command fails on unmutated code:\n" + base.stdout[-3000:])
        return 1
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "exec", str(cfg), str(session)], cwd=src, env=env, check=True)
    killed, survived, other = [], [], []
    with use_db(str(session), WorkDB.Mode.open) as db:
        results = dict(db.results)
        for it in db.work_items:
            r = results.get(it.job_id)
            m = it.mutations[0]
            where = f"{m.module_path}:{m.start_pos[0]} {m.operator_name}"
            outcome = getattr(getattr(r, "test_outcome", None), "value", None)
            if outcome == "killed":
                killed.append(where)
            elif outcome == "survived":
                survived.append((where, r.diff))
            else:
                other.append((where, outcome, getattr(getattr(r, "worker_outcome", None), "value", None)))
    n = len(killed) + len(survived)
    score = len(killed) / n if n else float("nan")
    summary = {"n_sampled": len(sample), "killed": len(killed), "survived": len(survived),
               "incompetent_or_error": len(other), "score": score, "tests": tests, "deselect": args.deselect,
               "survivors": [w for w, _ in survived], "other": other}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "survivors.txt").write_text("".join(f"== {w}\n{d}\n" for w, d in survived))
    print(f"mutation score {len(killed)}/{n} = {score:.2f} ({len(other)} incompetent/errored)")
    for w, _ in survived:
        print(f"  survived: {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
