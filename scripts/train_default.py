"""Reproduce the default bundle (models/default) from scratch, or a NIKL bundle with the same recipe.

    python scripts/train_default.py                                   # fashion -> models/default
    python scripts/train_default.py --data ../shared/data/nikl-absa-2022/train.jsonl \
        --dev ../shared/data/nikl-absa-2022/dev.jsonl --out models/nikl

Trains on ``--data`` (thresholds calibrated on a 10% split of it), evaluates on ``--dev`` and records
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from reviewlens.data import read_reviews
    from reviewlens.evaluation import evaluate_bundle
    from reviewlens.training import TrainConfig, train, warm_start_schema

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
