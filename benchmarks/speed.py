"""Speed, size, memory and F1 of a bundle's compressed variants, against torch fp32 and a naive reference.

    python benchmarks/speed.py --quick                      # models/default on the fashion dev set
    python benchmarks/speed.py --model models/nikl --dev ../shared/data/nikl-absa-2022/dev.jsonl \\
        --train ../shared/data/nikl-absa-2022/train.jsonl --unlabeled ../shared/data/nikl-absa-2022/unlabeled.jsonl

Variants: the torch fp32 bundle, its ONNX fp32 and ONNX int8 exports, a distilled int8 student with a
trimmed vocabulary (and, with ``--prune R``, a head-pruned int8 model). Missing variants are built with
``reviewlens.compress`` into ``--workdir`` and reused on the next run. Each variant is measured in a
subprocess of its own (so its peak RSS is its own) on the same sampled dev reviews, with fixed thread
counts: on-disk size, peak RSS, reviews/s of ``analyze`` without and with highlights, the pipeline F1
on the whole dev set, and the encoder's achieved GFLOP/s (encoder FLOPs of the padded batches over the
time spent in the model) against a float32 matrix-multiply roofline measured by this script.

The naive reference is the seed's procedure: one review at a time, one forward pass per model input,
and for highlights one forward pass per masked variant *per keyword*. Both do the same highlight work:
the sentiment model occludes the words of the clause of the keyword's top highlight, as ``analyze`` does
by default (``--sentiment-scope review``: every word, for both). Every speed is printed as a ratio to
torch fp32 and to the naive reference, measured in the same run.

The last table compares occlusion highlights with gradient × input highlights (torch fp32): speed of
``analyze`` with each, and on ``--attribution-reviews`` dev reviews the agreement of the two word
rankings (top-1 word agreement, mean Kendall tau) for the keyword and the sentiment model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FASHION = DATA / "aihub-absa-fashion"


# -- FLOPs ----------------------------------------------------------------------------------------------------


def encoder_flops(shape: dict, batch: int, width: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of the encoder layers on a padded (batch, width) input."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    total = 0.0
    for heads in shape["heads_per_layer"]:
        a = heads * shape["head_dim"]
        per_sequence = 8 * width * h * a + 4 * width * h * i + 4 * width * width * a
        total += batch * per_sequence
    return float(total)


class Meter:
    """Counts the encoder FLOPs and the time spent inside a scorer's model calls."""

    def __init__(self, shapes: dict[str, dict]) -> None:
        self.shapes = shapes
        self.reset()

    def reset(self) -> None:
        self.flops, self.model_seconds, self.model_cpu_seconds, self.calls, self.rows = 0.0, 0.0, 0.0, 0, 0

    def timed(self, run):
        """Run ``run()`` and add its wall and CPU time to the model time."""
        start, cpu = time.perf_counter(), time.process_time()
        out = run()
        self.model_seconds += time.perf_counter() - start
        self.model_cpu_seconds += time.process_time() - cpu
        return out

    def wrap(self, scorer) -> None:
        inner = scorer._logits

        def timed(which, batch):
            out = self.timed(lambda: inner(which, batch))
            b, w = batch["input_ids"].shape
            self.flops += encoder_flops(self.shapes[which], b, w)
            self.calls += 1
            self.rows += b
            return out

        scorer._logits = timed


def shapes_of(bundle_path: Path, analyzer) -> dict[str, dict]:
    from reviewlens.compress.onnx import encoder_shape, read_info

    out = {}
    for which in ("keyword", "sentiment"):
        if (bundle_path / which / "onnx.json").is_file():
            out[which] = read_info(bundle_path / which)["encoder"]
        else:
            out[which] = encoder_shape(analyzer.scorer.models[which])
    return out


# -- the naive reference -----------------------------------------------------------------------------------------


class NaiveReference:
    """The seed's procedure: one review at a time, one forward pass per input, per masked variant and keyword."""

    def __init__(self, bundle_path: Path) -> None:
        from reviewlens.bundle import ModelBundle
        from reviewlens.compress.onnx import encoder_shape
        from reviewlens.modeling import load_classifier, max_input_length

        self.bundle = ModelBundle.load(bundle_path)
        self.models, self.tokenizers, self.max_lengths, self.shapes = {}, {}, {}, {}
        for which in ("keyword", "sentiment"):
            model, tokenizer = load_classifier(bundle_path / which)
            self.models[which], self.tokenizers[which] = model, tokenizer
            self.max_lengths[which] = max_input_length(model, tokenizer)
            self.shapes[which] = encoder_shape(model)
        self.meter = Meter(self.shapes)

    def _probs(self, which: str, text: str) -> np.ndarray:
        import torch

        enc = self.tokenizers[which](text, truncation=True, max_length=self.max_lengths[which], return_tensors="pt")
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            logits = self.meter.timed(lambda: self.models[which](**enc).logits[0].numpy())
        self.meter.flops += encoder_flops(self.shapes[which], 1, enc["input_ids"].shape[1])
        self.meter.calls += 1
        self.meter.rows += 1
        if which == "keyword":
            return 1.0 / (1.0 + np.exp(-logits))
        z = np.exp(logits - logits.max())
        return z / z.sum()

    def analyze(self, texts, highlights: bool = True, sentiment_scope: str = "clause") -> list[dict]:
        from reviewlens.highlight import clause_around, in_scope, masked_variants, whitespace_words
        from reviewlens.tasks import SENTIMENT_TEMPLATE, sentiment_input

        schema, thresholds = self.bundle.schema, self.bundle.thresholds
        template = self.bundle.templates.get("sentiment", SENTIMENT_TEMPLATE)
        out = []
        for text in texts:
            probs = self._probs("keyword", text)
            result = {}
            for k, keyword in enumerate(schema.keywords):
                if probs[k] < thresholds.get(keyword, 0.5):
                    continue
                dist = self._probs("sentiment", sentiment_input(text, keyword, template))
                level = int(np.argmax(dist))
                item = {"level": schema.levels[level]}
                if highlights:
                    words = whitespace_words(text)
                    kw_mask = self.tokenizers["keyword"].mask_token
                    st_mask = self.tokenizers["sentiment"].mask_token
                    kw_drop = [probs[k] - self._probs("keyword", v)[k] for v in masked_variants(text, words, kw_mask)]
                    top = int(np.argmax(kw_drop)) if words else None
                    scope = words
                    if sentiment_scope == "clause" and top is not None and kw_drop[top] > 0:
                        scope = in_scope(words, clause_around(text, words[top][1]))
                    st_drop = [dist[level] - self._probs("sentiment", sentiment_input(v, keyword, template))[level]
                               for v in masked_variants(text, scope, st_mask)]
                    best = int(np.argmax(st_drop)) if scope else None
                    # as analyze: a highlight must lower the probability when masked
                    item["word"] = words[top][0] if top is not None and kw_drop[top] > 0 else None
                    item["sentiment_word"] = scope[best][0] if best is not None and st_drop[best] > 0 else None
                result[keyword] = item
            out.append(result)
        return out


# -- worker: one variant in its own process --------------------------------------------------------------------


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux from VmHWM: ``ru_maxrss`` survives execve, so a worker
    started by a parent that had grown to 8 GB would report the parent's 8 GB."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args) -> dict:
    set_threads(args.threads)
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    bundle_path = Path(args.bundle)
    started = time.perf_counter()
    if args.kind == "naive":
        runner = NaiveReference(bundle_path)
        meter = runner.meter
        analyze = runner.analyze
        analyzer = None
    else:
        from reviewlens.analyzer import ReviewAnalyzer
        from reviewlens.bundle import ModelBundle

        bundle = ModelBundle.load(bundle_path)
        if bundle.backend == "onnx":
            from reviewlens.compress.onnx import OnnxScorer

            analyzer = ReviewAnalyzer(bundle, OnnxScorer.from_bundle(bundle, batch_size=args.batch_size,
                                                                     threads=args.threads))
        else:
            analyzer = ReviewAnalyzer.from_pretrained(bundle_path, batch_size=args.batch_size)
        meter = Meter(shapes_of(bundle_path, analyzer))
        meter.wrap(analyzer.scorer)
        analyze = analyzer.analyze
    load_s = time.perf_counter() - started
    analyze(texts[:4], highlights=True)  # warm-up: lazy initialisation, first-call allocations
    result = {"load_s": load_s, "reviews": len(texts)}
    for mode, highlights in (("plain", False), ("highlights", True)):
        meter.reset()
        start, cpu = time.perf_counter(), time.process_time()
        predictions = analyze(texts, highlights=highlights, sentiment_scope=args.sentiment_scope)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        result[mode] = {"seconds": seconds, "cpu_seconds": cpu_seconds, "model_seconds": meter.model_seconds,
                        "model_cpu_seconds": meter.model_cpu_seconds, "gflop": meter.flops / 1e9,
                        "model_calls": meter.calls, "model_rows": meter.rows}
        if highlights:
            result["top_words"] = _top_words(predictions)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _top_words(predictions) -> list[dict]:
    """keyword -> (level, top keyword word, top sentiment word) of each review, to compare implementations."""
    out = []
    for p in predictions:
        if isinstance(p, dict):
            out.append({k: [v["level"], v.get("word"), v.get("sentiment_word")] for k, v in p.items()})
        else:
            out.append({k.keyword: [k.level, k.highlights[0].word if k.highlights else None,
                                    k.sentiment_highlights[0].word if k.sentiment_highlights else None]
                        for k in p.keywords})
    return out


def roofline(args) -> dict:
    """Float32 matmul GFLOP/s with torch on the benchmark's threads (best of several rounds)."""
    import torch

    set_threads(args.threads)
    m, k, n = 2048, 384, 1536  # a batch of tokens through an e5-small FFN matrix
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    best = {"wall": 0.0, "cpu": 0.0}
    for _ in range(5):
        reps, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < 0.5:
            a @ b
            reps += 1
        flop = 2 * m * k * n * reps / 1e9
        best["wall"] = max(best["wall"], flop / (time.perf_counter() - start))
        best["cpu"] = max(best["cpu"], flop / max(time.process_time() - cpu, 1e-9))
    return {"gflops": best, "shape": [m, k, n]}


def attribution_compare(args) -> dict:
    """Occlusion vs gradient × input on the torch bundle: analyze speed with each, and agreement."""
    from scipy.stats import kendalltau

    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.attribution import keyword_word_scores, sentiment_word_scores
    from reviewlens.highlight import masked_variants, whitespace_words

    set_threads(args.threads)
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    analyzer = ReviewAnalyzer.from_pretrained(args.bundle, batch_size=args.batch_size)
    scorer = analyzer.scorer
    analyzer.analyze(texts[:4], attribution="gradient")
    speed = {}
    for method in ("occlusion", "gradient"):
        subset = texts[: args.speed_reviews]
        start, cpu = time.perf_counter(), time.process_time()
        analyzer.analyze(subset, highlights=True, attribution=method)
        speed[method] = {"wall": len(subset) / (time.perf_counter() - start),
                         "cpu": len(subset) / max(time.process_time() - cpu, 1e-9)}

    # full word scores of both methods on the same (review, keyword) targets
    probs = analyzer.keyword_probabilities(texts)
    chosen = analyzer.predict_keywords(probs)
    targets = [[int(k) for k in np.flatnonzero(chosen[i])] for i in range(len(texts))]
    words = [whitespace_words(t) for t in texts]
    mask = scorer.mask_token("keyword")
    variants, owner = [], []
    for i, t in enumerate(texts):
        if targets[i] and words[i]:
            variants += masked_variants(t, words[i], mask)
            owner += [i] * len(words[i])
    masked_probs = scorer.keyword_probs(variants) if variants else np.zeros((0, len(analyzer.keywords)))
    owner = np.asarray(owner)
    grad_kw = keyword_word_scores(scorer, texts, targets)
    kw_pairs = []
    for i in range(len(texts)):
        rows = masked_probs[owner == i] if len(owner) else masked_probs[:0]
        for k in targets[i]:
            if len(words[i]) >= 2:
                kw_pairs.append((probs[i, k] - rows[:, k], grad_kw[i][k]))

    pairs = [(i, analyzer.keywords[k]) for i in range(len(texts)) for k in targets[i] if len(words[i]) >= 2]
    dists = scorer.sentiment_probs([texts[i] for i, _ in pairs], [kw for _, kw in pairs])
    st_targets = [(i, kw, int(np.argmax(d)), float(d.max())) for (i, kw), d in zip(pairs, dists)]
    st_mask = scorer.mask_token("sentiment")
    st_variants, st_kws, st_owner = [], [], []
    for p, (i, kw, _, _) in enumerate(st_targets):
        masked = masked_variants(texts[i], words[i], st_mask)
        st_variants += masked
        st_kws += [kw] * len(masked)
        st_owner += [p] * len(masked)
    st_probs = scorer.sentiment_probs(st_variants, st_kws) if st_variants else np.zeros((0, 1))
    st_owner = np.asarray(st_owner)
    grad_st = sentiment_word_scores(scorer, texts, st_targets)
    st_pairs = [(base - st_probs[st_owner == p][:, level], grad_st[p])
                for p, (_, _, level, base) in enumerate(st_targets)]

    def agreement(rows):
        if not rows:
            return {"pairs": 0, "top1": float("nan"), "kendall_tau": float("nan")}
        top1 = np.mean([int(np.argmax(o)) == int(np.argmax(g)) for o, g in rows])
        taus = [kendalltau(o, g).statistic for o, g in rows]
        taus = [t for t in taus if np.isfinite(t)]
        return {"pairs": len(rows), "top1": float(top1), "kendall_tau": float(np.mean(taus)) if taus else float("nan")}

    return {"speed": speed, "speed_reviews": min(len(texts), args.speed_reviews), "agreement_reviews": len(texts),
            "keyword": agreement(kw_pairs), "sentiment": agreement(st_pairs)}


# -- orchestration -----------------------------------------------------------------------------------------------


def run_worker(mode: str, args, **extra) -> dict:
    """Run this script as a subprocess in ``mode``; returns its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--sentiment-scope", args.sentiment_scope]
    for key, value in extra.items():
        if value is True:
            command.append(f"--{key.replace('_', '-')}")
        elif value not in (None, False):
            command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {mode} {extra.get('bundle', '')} failed")
    print(f"  {mode} {Path(str(extra.get('bundle', ''))).name}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reference_metrics(args) -> dict:
    """The source bundle's metrics on the dev set (cached in the workdir: they do not change between runs)."""
    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.compress import evaluate_against

    cache = args.workdir / "reference.json"
    key = {"model": str(args.model.resolve()), "manifest_mtime": (args.model / "reviewlens.json").stat().st_mtime_ns,
           "dev": str(args.dev.resolve())}
    if cache.is_file():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached["metrics"]
    set_threads(args.threads)
    metrics = evaluate_against(ReviewAnalyzer.from_pretrained(args.model), args.dev)
    cache.write_text(json.dumps({"key": key, "metrics": metrics}, indent=2), encoding="utf-8")
    return metrics


def build_variants(args, reference: dict) -> dict[str, Path]:
    """Compress the source bundle into the variants that are not in the workdir yet."""
    from reviewlens.compress import CompressConfig, compress

    plans = {"onnx-fp32": CompressConfig(onnx=True), "onnx-int8": CompressConfig(int8=True),
             # the same with the word-embedding table quantized too: smaller, but one scale for 250k rows
             "onnx-int8-emb": CompressConfig(int8=True, quantize_embeddings=True),
             # feed-forward output projections left in float32: about half the int8 error, some of the speed
             "onnx-int8-ffn32": CompressConfig(int8=True, keep_ffn_output=True)}
    if not args.skip_distill:
        plans["student-int8"] = CompressConfig(distill=True, student_layers=args.student_layers, trim_vocab=True,
                                               student_models=tuple(args.student_models.split(",")),
                                               int8=True, epochs=args.distill_epochs, max_steps=args.distill_max_steps,
                                               augment=args.distill_augment, seed=args.seed)
    if args.prune:
        plans["pruned-int8"] = CompressConfig(prune=args.prune, int8=True, recovery_steps=args.recovery_steps,
                                              seed=args.seed)
    if args.variants:
        unknown = sorted(set(args.variants) - set(plans))
        if unknown:
            raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(plans)}")
        plans = {name: config for name, config in plans.items() if name in args.variants}
    paths = {}
    for name, config in plans.items():
        path = args.workdir / name
        if args.student is not None and name == "student-int8":
            path = args.student
        if not (path / "reviewlens.json").is_file() or args.rebuild:
            print(f"building {name} -> {path}", file=sys.stderr)
            started = time.perf_counter()
            needs = config.needs_texts
            compress(args.model, path, config, train_data=args.train if needs else None,
                     unlabeled=args.unlabeled if needs else None, eval_data=args.dev, reference=reference,
                     threads=args.threads)
            print(f"  built in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        paths[name] = path
    return paths


def fmt_ratio(x: float) -> str:
    return f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--dev", type=Path, default=FASHION / "dev.jsonl", help="Labeled dev set of the bundle's data.")
    parser.add_argument("--train", type=Path, default=FASHION / "train.jsonl", help="Distillation / trimming texts.")
    parser.add_argument("--unlabeled", type=Path, default=DATA / "naver-shopping-samples" / "balanced2500_binary.csv")
    parser.add_argument("--no-unlabeled", action="store_true", help="Distil on the training texts only.")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "speed")
    parser.add_argument("--student", type=Path, help="Use this prebuilt student bundle instead of building one.")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--quick", action="store_true", help="Fewer reviews: the sizes below shrink to quick defaults.")
    parser.add_argument("--reviews", type=int, help="Speed reviews (default 200, quick 60).")
    parser.add_argument("--naive-reviews", type=int, help="Reviews for the naive reference (default: --reviews).")
    parser.add_argument("--attribution-reviews", type=int, help="Agreement reviews (default 200, quick 100).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="Time speeds by wall clock, or by process CPU time (steadier on a shared machine; "
                             "use with --threads 1).")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sentiment-scope", default="clause", choices=["clause", "review"],
                        help="Where sentiment highlights may lie, for analyze and the naive reference alike.")
    parser.add_argument("--skip-distill", action="store_true")
    parser.add_argument("--variants", nargs="+", help="Only these compressed variants (torch fp32 and the naive "
                        "reference are always measured), e.g. onnx-int8 student-int8.")
    parser.add_argument("--no-attribution", action="store_true", help="Skip the occlusion vs gradient table.")
    parser.add_argument("--student-layers", type=int, default=4)
    parser.add_argument("--student-models", default="keyword,sentiment",
                        help="Models the student distils (e.g. sentiment: the keyword model keeps its layers).")
    parser.add_argument("--distill-epochs", type=float, default=3.0)
    parser.add_argument("--distill-max-steps", type=int, help="Cap on distillation steps per model (quick: 300).")
    parser.add_argument("--distill-augment", type=int,
                        help="Transfer texts made from the corpus for the student (default 10000, quick 0).")
    parser.add_argument("--prune", type=float, default=0.0, help="Also build a head-pruned int8 variant.")
    parser.add_argument("--recovery-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Also write every number to this JSON file.")
    # worker modes (internal)
    parser.add_argument("--mode", default="main", choices=["main", "analyzer", "naive", "roofline", "attribution"])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--texts", type=Path)
    parser.add_argument("--build-only", action="store_true", help="Build the missing variants, measure nothing.")
    parser.add_argument("--speed-reviews", type=int, default=60)
    args = parser.parse_args()

    if args.mode != "main":
        args.kind = args.mode
        handler = {"analyzer": worker, "naive": worker, "roofline": roofline, "attribution": attribution_compare}
        print(json.dumps(handler[args.mode](args)))
        return

    if not (args.model / "reviewlens.json").is_file():
        raise SystemExit(f"{args.model}: no bundle there (train it with scripts/train_default.py, or pass --model)")
    args.reviews = args.reviews or (60 if args.quick else 200)
    args.naive_reviews = args.naive_reviews or args.reviews
    args.attribution_reviews = args.attribution_reviews or (100 if args.quick else 200)
    if args.quick and args.distill_max_steps is None:
        args.distill_max_steps = 300
    if args.distill_augment is None:
        args.distill_augment = 0 if args.quick else 10000
    if args.no_unlabeled or not args.unlabeled.exists():
        args.unlabeled = None
    args.workdir.mkdir(parents=True, exist_ok=True)

    from reviewlens.compress import bundle_size
    from reviewlens.data import read_texts

    _, dev_texts = read_texts(args.dev)
    rng = np.random.default_rng(args.seed)
    sample = [dev_texts[i] for i in rng.permutation(len(dev_texts))]
    texts_file = args.workdir / "speed_texts.json"
    texts_file.write_text(json.dumps(sample[: args.reviews], ensure_ascii=False), encoding="utf-8")
    naive_file = args.workdir / "naive_texts.json"
    naive_file.write_text(json.dumps(sample[: args.naive_reviews], ensure_ascii=False), encoding="utf-8")
    attribution_file = args.workdir / "attribution_texts.json"
    attribution_file.write_text(json.dumps(sample[: args.attribution_reviews], ensure_ascii=False), encoding="utf-8")

    reference = reference_metrics(args)
    variants = build_variants(args, reference)
    if args.build_only:
        return
    started = time.perf_counter()
    print(f"threads {args.threads}; {args.reviews} speed reviews, {args.naive_reviews} naive, "
          f"{args.attribution_reviews} attribution; workdir {args.workdir}", file=sys.stderr)
    roof = run_worker("roofline", args)
    results = {"torch-fp32": run_worker("analyzer", args, bundle=args.model, texts=texts_file)}
    results["torch-fp32"]["eval"] = reference
    results["naive"] = run_worker("naive", args, bundle=args.model, texts=naive_file)
    paths = {"torch-fp32": args.model, "naive": args.model, **variants}
    for name, path in variants.items():
        results[name] = run_worker("analyzer", args, bundle=path, texts=texts_file)
        manifest = json.loads((path / "reviewlens.json").read_text(encoding="utf-8"))
        results[name]["eval"] = manifest["metrics"]["compression"]["eval"]
    attribution = None if args.no_attribution else run_worker(
        "attribution", args, bundle=args.model, texts=attribution_file,
        speed_reviews=min(args.reviews, args.attribution_reviews))

    # -- tables ------------------------------------------------------------------------------------------------
    clock = args.clock
    seconds_key, model_key = ("seconds", "model_seconds") if clock == "wall" else ("cpu_seconds", "model_cpu_seconds")

    def rate(r: dict, mode: str) -> float:
        return r["reviews"] / r[mode][seconds_key]

    base, naive = results["torch-fp32"], results["naive"]
    agree = sum(a == b for a, b in zip(naive["top_words"], base["top_words"]))
    unit = "rev/s" if clock == "wall" else "rev/CPU-s"
    print(f"\n## Speed, size and F1 ({args.model}, dev {args.dev.name}; {args.reviews} sampled dev reviews; "
          f"torch and onnxruntime on {args.threads} thread(s), inter-op 1; batch size {args.batch_size}; "
          f"speeds by {'wall-clock' if clock == 'wall' else 'process CPU'} time)\n")
    print(f"float32 matmul roofline (torch, {roof['shape']}, {args.threads} thread(s)): {roof['gflops'][clock]:.1f} "
          f"GFLOP/s ({roof['gflops']['wall']:.1f} per wall-clock second, {roof['gflops']['cpu']:.1f} per CPU second)\n")
    head = (f"| variant | size MB | peak RSS MB | plain {unit} | x torch | x naive | highlights {unit} | x torch | "
            f"x naive | pipeline F1 | loss pts | encoder GFLOP/s | % roofline |")
    print(head)
    print("|" + "|".join([" --- "] * (head.count("|") - 1)) + "|")
    rows = {}
    for name, r in results.items():
        size = bundle_size(paths[name])["total_bytes"] / 1e6
        f1 = r.get("eval", base["eval"])["pipeline_f1"]
        gflops = r["highlights"]["gflop"] / max(r["highlights"][model_key], 1e-9)
        x = rows[name] = {
            "size_mb": size, "peak_rss_mb": r["peak_rss_mb"], "plain_rate": rate(r, "plain"),
            "highlight_rate": rate(r, "highlights"), "f1": f1, "f1_loss_points": 100 * (base["eval"]["pipeline_f1"] - f1),
            "encoder_gflops": gflops, "roofline_share": gflops / roof["gflops"][clock],
            "plain_vs_torch": rate(r, "plain") / rate(base, "plain"),
            "plain_vs_naive": rate(r, "plain") / rate(naive, "plain"),
            "highlight_vs_torch": rate(r, "highlights") / rate(base, "highlights"),
            "highlight_vs_naive": rate(r, "highlights") / rate(naive, "highlights"),
            "wall": {"plain_rps": rate(r, "plain") if clock == "wall" else r["reviews"] / r["plain"]["seconds"],
                     "highlight_rps": r["reviews"] / r["highlights"]["seconds"]}}
        print(f"| {name} | {size:.1f} | {r['peak_rss_mb']:.0f} | {x['plain_rate']:.2f} | "
              f"{fmt_ratio(x['plain_vs_torch'])} | {fmt_ratio(x['plain_vs_naive'])} | {x['highlight_rate']:.2f} | "
              f"{fmt_ratio(x['highlight_vs_torch'])} | {fmt_ratio(x['highlight_vs_naive'])} | {f1:.4f}"
              f"{' (= torch)' if name == 'naive' else ''} | {x['f1_loss_points']:+.2f} | {gflops:.1f} | "
              f"{100 * x['roofline_share']:.0f}% |")
    same = args.naive_reviews == args.reviews
    print(f"\nsize: bundle files plus, for an adapter-over-base bundle, the base weights it loads. The naive reference "
          f"ran {args.naive_reviews} review(s){'' if same else ' (a prefix of the speed reviews)'}; its top "
          f"highlighted words equal analyze's on {agree}/{min(len(naive['top_words']), len(base['top_words']))} "
          f"reviews. GFLOP/s: encoder FLOPs of the padded batches of the highlights run over the time inside the "
          f"model; int8 variants do int8 work, so their share of the float32 roofline can exceed 100%.")
    if clock == "cpu":
        print("Wall-clock reviews/s of the same runs (the machine was shared, so these are noisier): " + ", ".join(
            f"{n} {x['wall']['plain_rps']:.2f} / {x['wall']['highlight_rps']:.2f}" for n, x in rows.items()))

    print("\nTargets:")
    best = max((n for n in rows if n != "naive"), key=lambda n: rows[n]["highlight_vs_naive"])
    print(f"- analyze with highlights >= 20x naive: best {best} {fmt_ratio(rows[best]['highlight_vs_naive'])}, "
          f"torch fp32 {fmt_ratio(rows['torch-fp32']['highlight_vs_naive'])} -> "
          f"{'met' if rows[best]['highlight_vs_naive'] >= 20 else 'NOT met'}")
    if "onnx-int8" in rows:
        r = rows["onnx-int8"]
        ok = r["plain_vs_torch"] >= 2.5 and r["f1_loss_points"] <= 1.0
        print(f"- ONNX int8 >= 2.5x torch fp32 with <= 1 point F1 loss: {fmt_ratio(r['plain_vs_torch'])} plain, "
              f"{fmt_ratio(r['highlight_vs_torch'])} with highlights, {r['f1_loss_points']:+.2f} points -> "
              f"{'met' if ok else 'NOT met'}")
    if "student-int8" in rows:
        r = rows["student-int8"]
        ratio = r["size_mb"] / rows["torch-fp32"]["size_mb"]
        ok = r["plain_vs_torch"] >= 6 and r["f1_loss_points"] <= 3.0 and ratio <= 0.25
        print(f"- distilled int8 student >= 6x torch fp32, <= 3 points loss, <= 1/4 size: "
              f"{fmt_ratio(r['plain_vs_torch'])} plain, {fmt_ratio(r['highlight_vs_torch'])} with highlights, "
              f"{r['f1_loss_points']:+.2f} points, size {ratio:.3f} of torch fp32 -> {'met' if ok else 'NOT met'}")

    if args.json:
        args.json.write_text(json.dumps({"roofline": roof, "results": results, "rows": rows,
                                         "attribution": attribution}, ensure_ascii=False, indent=2), encoding="utf-8")
    a = attribution
    if a is None:
        print(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s")
        return
    print(f"\n## Highlights: occlusion vs gradient x input (torch fp32; speed on {a['speed_reviews']} reviews, "
          f"agreement on {a['agreement_reviews']} dev reviews)\n")
    print(f"| method | analyze with highlights {unit} | x occlusion | keyword top-1 agreement | keyword Kendall tau | "
          "sentiment top-1 agreement | sentiment Kendall tau |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    occ, grad = a["speed"]["occlusion"][clock], a["speed"]["gradient"][clock]
    print(f"| occlusion | {occ:.2f} | 1.00x | (reference) | | | |")
    print(f"| gradient x input | {grad:.2f} | {fmt_ratio(grad / occ)} | {a['keyword']['top1']:.3f} "
          f"({a['keyword']['pairs']} pairs) | {a['keyword']['kendall_tau']:.3f} | {a['sentiment']['top1']:.3f} "
          f"({a['sentiment']['pairs']} pairs) | {a['sentiment']['kendall_tau']:.3f} |")
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
