"""Reproduce the default bundle (models/default) from scratch, or a NIKL bundle with the same recipe.

    python scripts/train_default.py                                   # fashion -> models/default
    python scripts/train_default.py --data ../shared/data/nikl-absa-2022/train.jsonl \
        --dev ../shared/data/nikl-absa-2022/dev.jsonl --out models/nikl

    python scripts/train_default.py --calibrate-only                  # refit thresholds + clause weight only

Trains on ``--data`` (thresholds and clause weight calibrated on a 10% split of it), evaluates on ``--dev`` and records
the dev metrics and the training time in the bundle's reviewlens.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "aihub-absa-fashion"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "train.jsonl")
    parser.add_argument("--dev", type=Path, default=DATA / "dev.jsonl")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "fashion-default.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--init-from", type=Path, default=None, help="warm start from this bundle's models")
    parser.add_argument("--calibrate-only", action="store_true", help="do not train: refit --out's thresholds and "
                        "clause weight on the same validation split of --data, then re-measure dev")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from reviewlens.bundle import ModelBundle
    from reviewlens.data import read_reviews, train_validation_split
    from reviewlens.evaluation import evaluate_bundle
    from reviewlens.training import TrainConfig, calibrate_bundle, train, warm_start_schema

    if args.calibrate_only:
        saved = ModelBundle.load(args.out)
        config = TrainConfig(**{k: v for k, v in saved.config.items() if k in TrainConfig.__dataclass_fields__})
        data = read_reviews(args.data, saved.schema, aliases=saved.schema.aliases or None)
        validation = train_validation_split(data, config.validation_size, config.seed)[1]
        bundle = calibrate_bundle(args.out, validation, config.clause_weight)
        bundle.metrics["dev"] = {"data": args.dev.name, **evaluate_bundle(args.out, args.dev).summary()}
        bundle.write_manifest()
        print(json.dumps(bundle.metrics, ensure_ascii=False, indent=2))
        return
    config = TrainConfig.from_yaml(args.config, seed=args.seed,
                                   init_from=str(args.init_from) if args.init_from else None)
    data = read_reviews(args.data, warm_start_schema(config), aliases=config.aliases or None, levels=config.levels)
    began = time.perf_counter()
    bundle = train(data, args.out, config)
    minutes = (time.perf_counter() - began) / 60
    result = evaluate_bundle(args.out, args.dev)
    bundle.metrics["dev"] = {"data": args.dev.name, **result.summary()}
    bundle.metrics["train_minutes"] = round(minutes, 1)
    bundle.write_manifest()
    print(json.dumps(bundle.metrics, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
