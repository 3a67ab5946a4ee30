"""Paired per-section effects of the deep-model ideas of issue 16 on her2st (leave-one-section-out).

For every outer test section X and every variant (a set of config overrides fixed a priori, see
``VARIANTS``), one model is trained exactly as ``spagraph run`` trains a fold (linear prior fitted
on the training sections, the prior alone as candidate epoch -1, early stopping on the validation
section(s), which are training-side: the next section(s) in cyclic order), and X is scored by:

- ``prior``: the linear prior alone (deep part silent);
- ``deep``: the best *deep* epoch by validation AUC (epoch >= 0), whatever the override rule says;
- ``sel_hm`` / ``sel_delong``: the model the one-SE rule keeps (prior unless the best deep epoch
  beats the prior on validation by more than one SE: Hanley-McNeil unpaired, or DeLong paired),
  both rules applied to the same fit (so the DeLong rule costs no extra training).

Nested: the prior's ``model.linear_C`` and ``model.feature_smoothing`` per outer fold are the ones
chosen by inner leave-one-section-out over that fold's 7 training sections
(:func:`spagraph.experiment.nested.choose`, prior alone; read from ``--params-from`` or computed);
the epoch and deep-vs-prior are chosen on the validation section(s), which lie inside the outer
training sections. X's labels are read only to score the finished models. Adaptation variants see
X's features with its labels stripped (:func:`spagraph.train.adapt.strip_labels`). The ``pretrain``
variant pretrains the gene stream once per outer fold on the unannotated pool minus every section
of X's patient (checked again here: :func:`fold_pretraining`), embedded with the fold's encoder;
the pool sections used are printed and stored in each record.

Outputs ``OUT/records/<variant>_<X>_s<seed>.json`` (resumable) and ``OUT/summary.json``; prints the
table: per variant the mean test AUC of ``deep``, its paired difference from the baseline's
``deep`` and from the prior (mean +/- SE over sections, better / worse sections, Wilcoxon
signed-rank p over sections; per-section DeLong p < 0.05 counts), and how often each rule kept
the deep model. The ``selftrain`` variant also scores X after transductive self-training
(:mod:`spagraph.train.selftrain`, X's labels stripped) from the model the Hanley-McNeil rule keeps
(``test_selftrain``), with its paired difference from the prior and from that kept model.

    OMP_NUM_THREADS=1 python benchmarks/deep_ideas.py experiments/her2st_loso.yaml \\
        --params-from RUN/nested --variants base orient --seeds 0 --out /tmp/deep_ideas
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np

# a-priori settings of each idea (never tuned on test sections)
VARIANTS = {
    "base": {},
    "orient": {"train.orient_augment": True},
    "tiles": {"train.tiles_per_step": 2, "train.tile_size": 8.0},
    "nval2": {"protocol.n_val": 2},
    "adabn": {"model.hidden_norm": "slice"},
    "coral": {"train.coral_weight": 1.0},
    "lr10x": {"train.lr": 0.003},
    "tiles_orient": {"train.tiles_per_step": 2, "train.tile_size": 8.0, "train.orient_augment": True},
    # the ``pretrain:`` section of experiments/her2st_loso_pretrain.yaml (cache_dir aside: set to
    # OUT/pretrain_cache, it changes no result); per outer fold the pool minus every section of
    # the test section's patient (spagraph.pretrain.pool.allowed_sections), embedded with the
    # fold's own gene encoder; pretraining seed 0 shared by every training seed of a fold
    "pretrain": {"pretrain.enabled": True, "pretrain.pool": "../shared/data/her2st_unlabelled",
                 "pretrain.objective": "masked", "pretrain.epochs": 30, "pretrain.lr": 0.001,
                 "pretrain.mask_rate": 0.3},
    # fixed a priori (2026-11-30, before any pretrain or combo result): the three ideas that cost
    # nothing against the prior in seeds 0-1 (n_val 2, AdaBN-style statistics, orientation
    # augmentation). Pretraining left out: its only evidence was not nested, and with n_val 2 the
    # folds train on 5 sections, so the combo would need its own 8 pretrainings (a separate
    # encoder per fold) in the session's CPU budget; it is measured alone as ``pretrain``.
    "combo": {"protocol.n_val": 2, "model.hidden_norm": "slice", "train.orient_augment": True},
    # transductive self-training on the test slice (labels stripped), spagraph/train/selftrain.py: the
    # base fit, then 2 rounds from the model the Hanley-McNeil rule keeps; every other self_train_*
    # setting at its default, fixed a priori there (module text) before any test-section number
    "selftrain": {"train.self_train_rounds": 2},
    # fixed a priori (2026-11-30 13:45 UTC, before any dann / mmd number on a her2st section):
    # weight 1 for both, the scale of the coral variant's term (alignment counts as much as the
    # class loss, no tuning on test sections). dann: Ganin & Lempitsky's ceiling lambda = 1 with
    # their ramp 2 / (1 + exp(-10 p)) - 1 over train.epochs (60); the discriminator (one hidden
    # layer of the features' width) tells the 6 training sections and the test section apart,
    # trained with the model's AdamW settings. mmd: Gaussian kernel at the median-heuristic
    # bandwidth, DAN's weight 1, between the step's training spots and the test section.
    "dann": {"train.adversarial_weight": 1.0},
    "mmd": {"train.mmd_weight": 1.0},
    # added 2026-11-30 ~14:00 UTC after dann seeds 0-1 had run: a training-side diagnostic (no test
    # label) showed dann's discriminator at chance through every fit (cross-entropy ~ ln 7 = 1.95
    # over the ~15 epochs early stopping allows at lr 3e-4), so its reversed gradient carried no
    # slice information. Same term with the discriminator's learning rate x10 (3e-3, the lr x10
    # variant's value); seen dann test numbers: deep equal to the prior to 3-4 decimals.
    "dann_d10": {"train.adversarial_weight": 1.0, "train.adversarial_lr_scale": 10.0},
    # added 2026-11-30 14:30 UTC after the dann / mmd / dann_d10 results (their deep model equals the
    # prior: alignment acts from step 1 while the class loss, through the zero-initialised head,
    # does not yet reach the features). A check of that reading, not a tuned setting: the mmd term
    # with Ganin's ramp on its weight (0 in epoch 0, 0.85 by epoch 15), nothing else changed.
    "mmd_ramp": {"train.mmd_weight": 1.0, "train.align_ramp": True},
    # fixed a priori (2026-11-30 14:45 UTC, before any her2st run with them): the two scale-token
    # options that fixed the synthetic token task (TOKEN_MODEL in spagraph/io/graph_task.py;
    # benchmarks/README.md, "token task"): each MSFA scale aggregates the stream's inputs rather than
    # its LayerNorm + GELU hidden spots, and each scale token gets its own LayerNorm like the self
    # token. Nothing else changed (her2st_loso.yaml's lr, hidden, epochs); the task's lr was not carried.
    "tokens": {"model.msfa_input": "input", "model.token_norm": True},
    # fixed a priori (14:47 UTC, by the brief, with tokens seeds 1-4 still running): tokens on top of
    # ``combo`` (n_val 2, AdaBN-style statistics, orientation augmentation), the variant that lost least
    "tokens_combo": {"protocol.n_val": 2, "model.hidden_norm": "slice", "train.orient_augment": True,
                     "model.msfa_input": "input", "model.token_norm": True},
}


def _auc(g, scores):
    from spagraph.train.metrics import binary_metrics
    m = g.label_mask.numpy()
    return binary_metrics(g.y.numpy()[m].astype(int), scores[m], 0.5)["auc"]


def fit_all_ways(cfg, graphs, fold, seed: int, pretrained: dict | None = None) -> dict:
    """One fit as ``spagraph.train.fit.fit`` runs it (the gene stream starting from ``pretrained``
    weights when given); the prior, the best deep epoch and both override rules' picks scored on
    the fold's test slice."""
    import torch
    from spagraph.experiment.runner import model_settings, train_settings
    from spagraph.train.adapt import strip_labels, uses_target
    from spagraph.train.fit import (build_model, positive_weight, predict_scores, prefer_prior, prior_candidate,
                                    spagraph_steps, start_state, train_loop, validation_auc)
    s, ms = train_settings(cfg), model_settings(cfg)
    tr, va = [graphs[n] for n in fold.train], [graphs[n] for n in fold.val]
    test = graphs[fold.test[0]]
    target = [strip_labels(test)] if uses_target(s) else None
    model = build_model(tr, ms, s, seed)
    if pretrained is not None:   # as fit() does: the self-supervised gene stream, then the rest as before
        from spagraph.pretrain.ssl import load_pretrained
        load_pretrained(model, pretrained)
    prior_state = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr, weight_decay=s.weight_decay)
    state = start_state(model, s, seed, has_val=True)
    prior_candidate(model, va, s, state)
    deep = {"auc": -1.0, "epoch": None, "state": None}
    n_steps = [0]

    def after_epoch(epoch, rec):
        if rec["val_auc"] is not None and rec["val_auc"] > deep["auc"]:
            deep.update(auc=rec["val_auc"], epoch=epoch, state=copy.deepcopy(model.state_dict()))

    steps = spagraph_steps(model, tr, s, positive_weight(tr, s), state.gen, target)

    def counted(rng):
        for x in steps(rng):
            n_steps[0] += 1
            yield x
    t0 = time.time()
    train_loop(model, opt, state, s.epochs, counted, lambda m: validation_auc(m, va, s), after_epoch)
    secs = time.time() - t0
    rec = {"prior_val": state.history[0]["val_auc"], "deep_val": deep["auc"], "deep_epoch": deep["epoch"],
           "best_epoch_no_rule": state.stop.best_epoch, "epochs_run": len(state.history) - 1,
           "steps": n_steps[0], "fit_seconds": round(secs, 1)}
    if target is not None:   # the alignment terms per epoch (adaptation variants): did they act?
        rec["align_terms"] = [{k: h[k] for k in ("epoch", "coral", "mmd", "disc_ce", "reversal", "ramp") if k in h}
                              for h in state.history if h["epoch"] >= 0]
    for rule in ("hanley_mcneil", "delong"):
        st = copy.copy(state)
        st.stop = copy.copy(state.stop)
        kept = prefer_prior(st, va, model, s.model_copy(update={"prior_rule_se": rule}))
        rec[f"deep_kept_{rule}"] = bool(st.stop.best_epoch != -1 and not kept)
    model.load_state_dict(prior_state)
    p_prior = predict_scores(model, test, s)
    model.load_state_dict(deep["state"])
    p_deep = predict_scores(model, test, s)
    y = test.y.numpy()[test.label_mask.numpy()].astype(int)
    from spagraph.train.metrics import delong_paired
    a_deep, a_prior, var = delong_paired(y, p_deep[test.label_mask.numpy()], p_prior[test.label_mask.numpy()])
    rec.update(test_prior=_auc(test, p_prior), test_deep=_auc(test, p_deep), delong_test_var=float(var))
    rec["test_sel_hanley_mcneil"] = rec["test_deep"] if rec["deep_kept_hanley_mcneil"] else rec["test_prior"]
    rec["test_sel_delong"] = rec["test_deep"] if rec["deep_kept_delong"] else rec["test_prior"]
    if s.self_train_rounds > 0:   # self-training from the shipped (HM-rule) model; X's labels stripped
        from spagraph.train.selftrain import self_train_scores
        model.load_state_dict(state.stop.best_state if rec["deep_kept_hanley_mcneil"] else prior_state)
        info: dict = {}
        t0 = time.time()
        p_st = self_train_scores(model, strip_labels(test), s, seed, info)
        m = test.label_mask.numpy()
        named = info["mask"] & m        # diagnosis only, after the fact: how right the last pseudo-labels were
        rec.update(test_selftrain=_auc(test, p_st), selftrain_seconds=round(time.time() - t0, 1),
                   selftrain_rounds=info["rounds"],
                   pseudo_accuracy=float((info["labels"][named] == test.y.numpy()[named]).mean()) if named.any() else None)
    return rec


def nested_params(cfg, slices, groups, test: str, params_dir: Path | None) -> dict:
    """The prior's settings for outer test section ``test`` chosen by inner LOSO on the others."""
    if params_dir is not None and (params_dir / f"{test}.json").exists():
        return json.loads((params_dir / f"{test}.json").read_text())["params"]
    from spagraph.experiment.config import validate_config
    from spagraph.experiment.nested import choose
    d = cfg.to_dict()
    d["nested"] = {"grid": {"model.linear_C": [0.0003, 0.001, 0.003], "model.feature_smoothing": [0.3, 0.5]},
                   "choose_deep": False, "inner_seed": 0}
    rest = [n for n in slices if n != test]
    return choose(validate_config(d), {n: slices[n] for n in rest}, {n: groups[n] for n in rest})["params"]


def fold_pretraining(cfg, test: str, encoder) -> dict:
    """The outer fold's pretrained gene stream (:func:`spagraph.pretrain.ssl.pretrain_fold`, cached
    by content) and the pool sections it used; refuses (PatientLeak) if any of them belongs to the
    test section's patient, so a broken pool filter cannot pass silently."""
    from spagraph.pretrain.pool import PatientLeak, same_patient
    from spagraph.pretrain.ssl import pretrain_fold
    pt = pretrain_fold(cfg, [test], encoder)
    leak = same_patient(pt["sections"], [test], cfg.pretrain.patient_pattern)
    if leak:
        raise PatientLeak(f"fold {test}: pretraining used {leak}, section(s) of the test patient")
    h = pt["history"]
    return {"state": pt["state"], "sections": list(pt["sections"]), "key": pt["key"], "cache": pt["cache"],
            "seconds": pt["seconds"], "loss_first": h[0]["loss"], "loss_last": h[-1]["loss"]}


def paired(a, b) -> dict:
    """a - b per section (:func:`spagraph.bench.table.paired_difference`, ties within 1e-4)."""
    from spagraph.bench.table import paired_difference
    return paired_difference(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), tie=1e-4)


def summarise(records: list[dict], sections: list[str]) -> dict:
    from scipy.stats import norm
    out = {}
    variants = sorted({r["variant"] for r in records}, key=lambda v: list(VARIANTS).index(v))
    base = {(r["test"], r["seed"]): r for r in records if r["variant"] == "base"}
    for v in variants:
        rs = sorted([r for r in records if r["variant"] == v], key=lambda r: (r["seed"], sections.index(r["test"])))
        seeds = sorted({r["seed"] for r in rs})
        # per section: mean over seeds
        sec = {}
        for t in sections:
            rr = [r for r in rs if r["test"] == t]
            if rr:
                sec[t] = {k: float(np.mean([r[k] for r in rr])) for k in
                          ("test_prior", "test_deep", "test_sel_hanley_mcneil", "test_sel_delong")}
                sec[t]["base_deep"] = float(np.mean([base[(t, r["seed"])]["test_deep"] for r in rr
                                                     if (t, r["seed"]) in base])) if base else float("nan")
                z = [(r["test_deep"] - r["test_prior"]) / np.sqrt(r["delong_test_var"]) for r in rr
                     if r["delong_test_var"] > 0]
                sec[t]["delong_p"] = float(2 * norm.sf(abs(np.mean(z)))) if z else 1.0
                sec[t]["delong_sign"] = float(np.sign(np.mean(z))) if z else 0.0
        ts = list(sec)
        col = lambda k: [sec[t][k] for t in ts]
        o = {"sections": ts, "seeds": seeds, "per_section": sec,
             "mean": {k: float(np.mean(col(k))) for k in ("test_prior", "test_deep", "test_sel_hanley_mcneil",
                                                         "test_sel_delong")},
             "deep_vs_prior": paired(col("test_deep"), col("test_prior")),
             "sel_hm_vs_prior": paired(col("test_sel_hanley_mcneil"), col("test_prior")),
             "sel_delong_vs_prior": paired(col("test_sel_delong"), col("test_prior")),
             "delong_rule_vs_hm_rule": paired(col("test_sel_delong"), col("test_sel_hanley_mcneil")),
             "deep_kept_hanley_mcneil": int(sum(r["deep_kept_hanley_mcneil"] for r in rs)),
             "deep_kept_delong": int(sum(r["deep_kept_delong"] for r in rs)), "n_fits": len(rs),
             "delong_sig_better": int(sum(sec[t]["delong_p"] < 0.05 and sec[t]["delong_sign"] > 0 for t in ts)),
             "delong_sig_worse": int(sum(sec[t]["delong_p"] < 0.05 and sec[t]["delong_sign"] < 0 for t in ts)),
             "mean_steps": float(np.mean([r["steps"] for r in rs])),
             "mean_fit_seconds": float(np.mean([r["fit_seconds"] for r in rs]))}
        if v != "base" and base:
            o["deep_vs_base_deep"] = paired(col("test_deep"), col("base_deep"))
        if all("test_selftrain" in r for r in rs):
            for t in ts:
                rr = [r for r in rs if r["test"] == t]
                sec[t]["test_selftrain"] = float(np.mean([r["test_selftrain"] for r in rr]))
                acc = [r["pseudo_accuracy"] for r in rr if r.get("pseudo_accuracy") is not None]
                sec[t]["pseudo_accuracy"] = float(np.mean(acc)) if acc else float("nan")
            o["mean"]["test_selftrain"] = float(np.mean(col("test_selftrain")))
            o["selftrain_vs_prior"] = paired(col("test_selftrain"), col("test_prior"))
            o["selftrain_vs_sel_hm"] = paired(col("test_selftrain"), col("test_sel_hanley_mcneil"))
            o["mean_selftrain_seconds"] = float(np.mean([r["selftrain_seconds"] for r in rs]))
        out[v] = o
    return out


def print_table(summary: dict) -> None:
    f = lambda p: f"{p['mean']:+.4f} ± {p['se']:.4f} ({p['better']}/{p['worse']}, p={p['wilcoxon_p']:.2f})"
    print("| variant | seeds | prior | deep | Δ deep vs base deep | Δ deep vs prior | DeLong sig +/- | "
          "kept HM | kept DeLong | sel HM | sel DeLong | steps | fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for v, o in summary.items():
        m = o["mean"]
        print(f"| {v} | {','.join(map(str, o['seeds']))} | {m['test_prior']:.4f} | {m['test_deep']:.4f} | "
              f"{f(o['deep_vs_base_deep']) if 'deep_vs_base_deep' in o else '—'} | {f(o['deep_vs_prior'])} | "
              f"{o['delong_sig_better']}/{o['delong_sig_worse']} | {o['deep_kept_hanley_mcneil']}/{o['n_fits']} | "
              f"{o['deep_kept_delong']}/{o['n_fits']} | {m['test_sel_hanley_mcneil']:.4f} | {m['test_sel_delong']:.4f} | "
              f"{o['mean_steps']:.0f} | {o['mean_fit_seconds']:.0f} |")
    print()
    print("| variant | kept model, HM rule: mean AUC | Δ vs prior | kept model, DeLong rule: mean AUC | Δ vs prior | "
          "Δ DeLong rule vs HM rule |")
    print("|---|---|---|---|---|---|")
    for v, o in summary.items():
        m = o["mean"]
        print(f"| {v} | {m['test_sel_hanley_mcneil']:.4f} | {f(o['sel_hm_vs_prior'])} | {m['test_sel_delong']:.4f} | "
              f"{f(o['sel_delong_vs_prior'])} | {f(o['delong_rule_vs_hm_rule'])} |")
    for v, o in summary.items():
        if "selftrain_vs_prior" in o:
            print()
            print("| variant | self-trained: mean AUC | Δ vs prior | Δ vs kept model (HM rule) | self-training s |")
            print("|---|---|---|---|---|")
            print(f"| {v} | {o['mean']['test_selftrain']:.4f} | {f(o['selftrain_vs_prior'])} | "
                  f"{f(o['selftrain_vs_sel_hm'])} | {o['mean_selftrain_seconds']:.0f} |")
            print(v, "self-trained / prior (last round's pseudo-label accuracy):",
                  " ".join(f"{t}:{o['per_section'][t]['test_selftrain']:.3f}/{o['per_section'][t]['test_prior']:.3f}"
                           f"({o['per_section'][t]['pseudo_accuracy']:.2f})" for t in o["sections"]))
    print()
    for v, o in summary.items():
        print(v, " ".join(f"{t}:{o['per_section'][t]['test_deep']:.3f}/{o['per_section'][t]['test_prior']:.3f}"
                          for t in o["sections"]))


def main() -> None:
    import torch
    from spagraph.experiment.config import load_config
    from spagraph.experiment.data import load_slices, plan_folds
    from spagraph.experiment.runner import embed_and_graph
    from spagraph.experiment.tune import apply_params
    from spagraph.utils import atomic_write_json
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--variants", nargs="+", default=["base"], choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--params-from", default=None, help="a nested run's nested/ folder (inner-LOSO choices per fold)")
    ap.add_argument("--sections", nargs="*", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--summary-seeds", type=int, nargs="+", default=None,
                    help="summarise only the records of these seeds (default: every record in OUT)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out); (out / "records").mkdir(parents=True, exist_ok=True)
    cfg = load_config(a.config)
    sections = [n for src in cfg.data.sources for n in (src.names or [])]
    if not a.summary_only:
        slices, groups = load_slices(cfg.data)
        pdir = Path(a.params_from) if a.params_from else None
        for test in (a.sections or sections):
            cache: dict = {}     # (graphs, gene encoder) per (training, validation) split of this outer fold
            params = nested_params(cfg, slices, groups, test, pdir)
            for v in a.variants:
                over = dict(VARIANTS[v])
                if over.get("pretrain.enabled"):
                    over["pretrain.cache_dir"] = str(out / "pretrain_cache")
                vcfg = apply_params(apply_params(cfg, params), over)
                fold = next(f for f in plan_folds(vcfg, list(slices), groups) if f.test == [test])
                todo = [sd for sd in a.seeds if not (out / "records" / f"{v}_{test}_s{sd}.json").exists()]
                if not todo:
                    continue
                key = (tuple(fold.train), tuple(fold.val))
                if key not in cache:
                    graphs, report = embed_and_graph(vcfg, slices, fold)
                    cache[key] = (graphs, (report or {}).get("gene_encoder"))
                pt = None
                if vcfg.pretrain.enabled:
                    t0 = time.time()
                    pt = fold_pretraining(vcfg, test, cache[key][1])
                    print(f"{v:12s} {test}: pretraining pool ({len(pt['sections'])} sections, test patient "
                          f"excluded): {' '.join(pt['sections'])}; cache {pt['cache']}, loss {pt['loss_first']:.3f}"
                          f" -> {pt['loss_last']:.3f}, {time.time() - t0:.0f} s load {os.getloadavg()[0]:.2f}",
                          flush=True)
                for seed in todo:
                    path = out / "records" / f"{v}_{test}_s{seed}.json"
                    t0 = time.time()
                    rec = fit_all_ways(vcfg, cache[key][0], fold, seed, pretrained=pt["state"] if pt else None)
                    rec.update(variant=v, test=test, seed=seed, params=params, val=fold.val,
                               overrides=VARIANTS[v], load=os.getloadavg()[0], seconds=round(time.time() - t0, 1))
                    if pt is not None:
                        rec["pretrain"] = {k: pt[k] for k in ("sections", "key", "cache", "seconds", "loss_first",
                                                              "loss_last")}
                    atomic_write_json(path, rec)
                    print(f"{v:12s} {test} s{seed}: prior {rec['test_prior']:.4f} deep {rec['test_deep']:.4f} "
                          f"(epoch {rec['deep_epoch']}, kept HM {rec['deep_kept_hanley_mcneil']}, DeLong "
                          f"{rec['deep_kept_delong']}) {rec['steps']} steps {rec['seconds']} s load {rec['load']:.2f}",
                          flush=True)
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    if a.summary_seeds is not None:
        records = [r for r in records if r["seed"] in a.summary_seeds]
    summary = summarise(records, sections)
    name = "summary.json" if a.summary_seeds is None else f"summary_s{'-'.join(map(str, a.summary_seeds))}.json"
    atomic_write_json(out / name, summary)
    print_table(summary)


if __name__ == "__main__":
    main()
