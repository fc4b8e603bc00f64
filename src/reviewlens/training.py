"""Training of the keyword and sentiment models on ``transformers.Trainer``, and of a whole bundle."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml

from .bundle import ModelBundle
from .calibration import fit_thresholds
from .clause_sentiment import fit_clause_weight, pair_sentiment
from .data import ReviewDataset, atomic_write_text, train_validation_split
from .errors import ReviewlensError
from .modeling import (MULTI_LABEL, SINGLE_LABEL, build_classifier, check_keyword_marker, init_classifier,
                       keyword_marker_pieces, last_index, max_input_length, save_classifier)
from .schema import LabelSchema
from .tasks import SENTIMENT_TEMPLATE, TEMPLATES, keyword_examples, sentiment_examples, span_sentiment_examples

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
"""What a checkpoint directory was made for (schema, data, config); checked before resuming."""
FINAL_WEIGHTS = "final.safetensors"
"""A stage's finished model inside ``<checkpoint_dir>/<task>/``."""
_RESUME_IGNORES = ("checkpoint_dir", "report_to", "logging_steps", "eval_batch_size")
"""Config fields that may change between an interrupted run and its resumption."""


@dataclass
class TrainConfig:
    """Every training setting, with defaults that work. A YAML file may set any field; CLI flags override."""

    base: str = "klue/roberta-base"
    pooling: str = "cls"
    sentiment_pooling: str | None = None  # default: ``pooling``; "mean_keyword" adds the keyword's own pieces
    max_length: int = 256
    keyword_epochs: float = 5.0
    sentiment_epochs: float = 5.0
    learning_rate: float = 5e-5
    head_learning_rate: float | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    dropout: float = 0.1
    early_stopping_patience: int = 3
    class_weighted: bool = True
    label_smoothing: float = 0.0
    keyword_pos_weight: float | None = None
    freeze_embeddings: bool = False
    lora_r: int = 0
    lora_alpha: int | None = None
    group_by_length: bool = True
    validation_size: float = 0.1
    threshold_min_support: int = 5
    report_to: str = "none"
    seed: int = 42
    aliases: dict[str, str] = field(default_factory=dict)
    levels: list[int] | None = None
    logging_steps: int = 50
    checkpoint_dir: str | None = None  # default <model_out>.checkpoints; removed once the bundle is written
    init_from: str | None = None  # a bundle (same schema, base and head) whose models training starts from
    span_examples: bool = False  # sentiment model: also every gold mention's own words with its level
    clause_weight: float | None = None  # level from review vs keyword's clause; None: chosen on validation

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **overrides) -> "TrainConfig":
        """Defaults, then the YAML file's fields, then the non-None ``overrides``."""
        values: dict = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ReviewlensError(f"{path}: cannot read the training config: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ReviewlensError(f"{path}: the training config must be a mapping of field: value")
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ReviewlensError(f"{path or 'config'}: unknown training setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _encode(tokenizer, texts: list[str], labels: list, max_length: int, keep_keyword: bool = False) -> _ListDataset:
    """Tokenized examples. With ``keep_keyword`` (sentiment inputs) a long input loses the end of its review,
    never the ``###키워드: …`` tail, as at prediction time (``Scorer.sentiment_visible_chars``)."""
    enc = tokenizer(texts, truncation=not keep_keyword, max_length=max_length)
    marker = keyword_marker_pieces(tokenizer) if keep_keyword else []
    items = []
    for i, label in enumerate(labels):
        ids = enc["input_ids"][i]
        if keep_keyword and len(ids) > max_length:
            at = last_index(ids, marker[-1])
            at = len(ids) - 1 if at is None else at
            tail = ids[max(at - len(marker) + 1, 0):][-max_length // 2:]
            ids = ids[:max_length - len(tail)] + tail
        items.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": label})
    return _ListDataset(items)


def _normalizer_batches(dataset: _ListDataset, tokenizer, config: TrainConfig, limit: int = 512):
    """Padded batches of up to ``limit`` training inputs (a seeded sample) for feature statistics."""
    from transformers import DataCollatorWithPadding

    rng = np.random.default_rng(config.seed)
    idx = rng.permutation(len(dataset))[:limit]
    idx = sorted(idx, key=lambda i: len(dataset[i]["input_ids"]))
    collate = DataCollatorWithPadding(tokenizer)
    for start in range(0, len(idx), config.eval_batch_size):
        chunk = [{k: dataset[i][k] for k in ("input_ids", "attention_mask")} for i in idx[start:start + config.eval_batch_size]]
        yield collate(chunk)


def _class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over the classes present, capped at 10."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    present = weights[counts > 0]
    weights = weights / present.mean() if present.size else weights
    return torch.tensor(np.clip(weights, 0.0, 10.0), dtype=torch.float32)


def _loss_function(problem_type: str, config: TrainConfig, class_weights: torch.Tensor | None):
    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if problem_type == MULTI_LABEL:
            pos_weight = None
            if config.keyword_pos_weight:
                pos_weight = torch.full((logits.shape[-1],), float(config.keyword_pos_weight), device=logits.device)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype),
                                                                        pos_weight=pos_weight)
        weight = class_weights.to(logits.device) if class_weights is not None else None
        return torch.nn.functional.cross_entropy(logits, labels.long(), weight=weight,
                                                 label_smoothing=config.label_smoothing)
    return loss


def _metrics(problem_type: str):
    from sklearn.metrics import f1_score

    def compute(pred) -> dict:
        logits, labels = pred.predictions, pred.label_ids
        if problem_type == MULTI_LABEL:
            predicted = (logits > 0).astype(int)
            return {"f1": f1_score(labels.astype(int), predicted, average="micro", zero_division=0)}
        return {"f1": f1_score(labels, logits.argmax(-1), average="macro", zero_division=0)}
    return compute


def _optimizer(model, config: TrainConfig):
    head_lr = config.head_learning_rate or config.learning_rate
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = name.startswith(("classifier", "score", "pre_classifier")) or ".classifier." in f".{name}"
        decay = 0.0 if param.ndim < 2 else config.weight_decay
        groups.setdefault((head_lr if is_head else config.learning_rate, decay), []).append(param)
    return torch.optim.AdamW([{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
                             lr=config.learning_rate)


def _train_one(task: str, texts: list[str], labels: list, val_texts: list[str], val_labels: list,
               label_names: list[str], problem_type: str, config: TrainConfig, epochs: float, workdir: Path,
               resume: bool = False, keywords: list[str] | None = None):
    """Fine-tune one classifier with Trainer; returns (model, tokenizer).

    Checkpoints go to ``workdir/<task>``; the finished model to ``workdir/<task>/final.safetensors``.
    With ``resume`` a finished stage is loaded, an unfinished one continues from its last complete checkpoint.
    """
    from safetensors.torch import load_model
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    set_seed(config.seed)
    pooling = config.pooling
    if task == "sentiment" and config.sentiment_pooling:
        pooling = config.sentiment_pooling
    elif pooling == "mean_keyword":
        raise ReviewlensError("pooling 'mean_keyword' is for the sentiment model: set sentiment_pooling instead")
    model, tokenizer = build_classifier(
        config.base, len(label_names), problem_type, pooling=pooling, labels=label_names,
        dropout=config.dropout, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
        freeze_embeddings=config.freeze_embeddings)
    if pooling == "mean_keyword":
        check_keyword_marker(tokenizer, model.head_config.marker_id, keywords or [])
    final = workdir / task / FINAL_WEIGHTS
    if not epochs:  # train() has checked that there is a warm start to keep
        logger.info("%s model: 0 epochs, kept as it is in %s", task, config.init_from)
        init_classifier(model, Path(config.init_from) / task)
        return model.eval(), tokenizer
    if resume and final.is_file():
        logger.info("%s model: finished in the interrupted run, loading %s", task, final)
        load_model(model, str(final))
        return model.eval(), tokenizer
    max_length = min(config.max_length, max_input_length(model, tokenizer))
    keep_keyword = task == "sentiment"
    train_set = _encode(tokenizer, texts, labels, max_length, keep_keyword)
    if config.init_from:  # warm start: the saved head keeps the feature statistics it was trained with
        logger.info("%s model: starting from %s", task, Path(config.init_from) / task)
        init_classifier(model, Path(config.init_from) / task)
    elif hasattr(model, "fit_normalizer"):
        model.fit_normalizer(_normalizer_batches(train_set, tokenizer, config))
    has_val = len(val_texts) > 0
    val_set = _encode(tokenizer, val_texts, val_labels, max_length, keep_keyword) if has_val else None
    class_weights = None
    if problem_type == SINGLE_LABEL and config.class_weighted:
        class_weights = _class_weights(labels, len(label_names))
    args = TrainingArguments(
        output_dir=str(workdir / task),
        num_train_epochs=epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        eval_strategy="epoch" if has_val else "no",
        save_strategy="epoch" if has_val else "no",
        save_total_limit=2,
        load_best_model_at_end=has_val,
        metric_for_best_model="f1" if has_val else None,
        greater_is_better=True,
        report_to=config.report_to,
        seed=config.seed,
        logging_steps=config.logging_steps,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    callbacks = [EarlyStoppingCallback(config.early_stopping_patience)] if has_val and config.early_stopping_patience else []
    trainer = Trainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_metrics(problem_type) if has_val else None,
        compute_loss_func=_loss_function(problem_type, config, class_weights),
        optimizers=(_optimizer(model, config), None), callbacks=callbacks,
    )
    checkpoint = last_checkpoint(workdir / task) if resume else None
    if checkpoint is not None:
        logger.info("%s model: resuming from %s", task, checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    model.eval()
    if trainer.is_world_process_zero():
        _save_weights(model, final)
    trainer.accelerator.wait_for_everyone()
    return model, tokenizer


def train_keyword_model(train: ReviewDataset, validation: ReviewDataset, config: TrainConfig, workdir: Path,
                        resume: bool = False):
    """The multi-label keyword classifier."""
    tr, va = keyword_examples(train), keyword_examples(validation)
    return _train_one("keyword", [e.text for e in tr], [e.targets for e in tr], [e.text for e in va],
                      [e.targets for e in va], list(train.schema.keywords), MULTI_LABEL, config,
                      config.keyword_epochs, workdir, resume)


def train_sentiment_model(train: ReviewDataset, validation: ReviewDataset, config: TrainConfig, workdir: Path,
                          resume: bool = False):
    """The single-label sentiment classifier over (review, keyword) pairs."""
    tr, va = sentiment_examples(train), sentiment_examples(validation)
    if not tr:
        raise ReviewlensError(f"{train.source}: no labeled (review, keyword) pairs to train the sentiment model on")
    if config.span_examples:
        spans = span_sentiment_examples(train)
        logger.info("sentiment model: %d (review, keyword) pairs + %d gold mention spans", len(tr), len(spans))
        tr = tr + spans
    return _train_one("sentiment", [e.text for e in tr], [e.label for e in tr], [e.text for e in va],
                      [e.label for e in va], train.schema.level_names(), SINGLE_LABEL, config,
                      config.sentiment_epochs, workdir, resume, keywords=list(train.schema.keywords))


def default_checkpoint_dir(output_dir: str | Path) -> Path:
    """``<output_dir>.checkpoints``, next to the bundle."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".checkpoints")


def last_checkpoint(directory: Path) -> str | None:
    """The newest complete Trainer checkpoint in ``directory`` (trainer_state.json is written last), or None."""
    if not directory.is_dir():
        return None
    complete = [p for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
                and (p / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def _save_weights(model, path: Path) -> None:
    """A finished model's weights, written atomically (temp file, then rename)."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_model(model, str(tmp))
    os.replace(tmp, path)


def _run_info(dataset: ReviewDataset, validation: ReviewDataset, config: TrainConfig) -> dict:
    settings = {k: v for k, v in asdict(config).items() if k not in _RESUME_IGNORES}
    return {"schema": dataset.schema.to_dict(), "data_hash": dataset.fingerprint(),
            "validation_hash": validation.fingerprint(), "config": settings}


def _prepare_checkpoints(directory: Path, info: dict, resume: bool) -> None:
    """Check a checkpoint directory against this run (``resume``) or start it afresh (main process only)."""
    run_file = directory / RUN_FILE
    if resume and run_file.is_file():
        try:
            before = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReviewlensError(f"{run_file}: cannot read it ({exc}); delete {directory} and train without "
                                  "--resume") from exc
        fix = f"train without --resume to start over (this deletes {directory}), or resume with the original data"
        if before.get("schema") != info["schema"]:
            raise ReviewlensError(
                f"{directory}: these checkpoints were trained for another label schema (keywords "
                f"{before.get('schema', {}).get('keywords')}, levels {before.get('schema', {}).get('levels')}); "
                f"this data has keywords {info['schema']['keywords']}, levels {info['schema']['levels']}. {fix}")
        for key, what in (("data_hash", "training data"), ("validation_hash", "validation data")):
            if before.get(key) != info[key]:
                raise ReviewlensError(f"{directory}: the {what} differs from the interrupted run's. {fix}")
        changed = sorted(k for k in set(before.get("config", {})) | set(info["config"])
                         if before.get("config", {}).get(k) != info["config"].get(k))
        if changed:
            raise ReviewlensError(f"{directory}: training settings differ from the interrupted run's: "
                                  f"{', '.join(changed)}. {fix}, and config")
        for stage in ("keyword", "sentiment"):  # checkpoints a kill left half written
            for partial in (directory / stage).glob("checkpoint-*"):
                if not (partial / "trainer_state.json").is_file():
                    shutil.rmtree(partial, ignore_errors=True)
        return
    if resume:
        logger.warning("no checkpoints in %s: training from the start", directory)
    if directory.exists():
        if not directory.is_dir() or (any(directory.iterdir()) and not run_file.is_file()):
            raise ReviewlensError(f"{directory} exists and is not a reviewlens checkpoint directory; move it away "
                                  "or set checkpoint_dir to another path")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    atomic_write_text(run_file, json.dumps(info, ensure_ascii=False, indent=2))


def warm_start_schema(config: TrainConfig) -> LabelSchema | None:
    """The label schema of ``config.init_from``'s bundle (read the training data with it), or None."""
    return ModelBundle.load(config.init_from).schema if config.init_from else None


def _check_warm_start(start: ModelBundle, dataset: ReviewDataset, config: TrainConfig) -> None:
    """A warm start needs the starting bundle's keywords, levels and base: the heads are copied as they are."""
    where = f"init_from {config.init_from}"
    if start.kind != "classifier":
        raise ReviewlensError(f"{where}: a {start.kind} bundle; warm start needs a classifier bundle")
    if start.schema.keywords != dataset.schema.keywords or start.schema.levels != dataset.schema.levels:
        raise ReviewlensError(
            f"{where}: its keywords {start.schema.keywords} and levels {start.schema.levels} differ from the data's "
            f"{dataset.schema.keywords} and {dataset.schema.levels} ({dataset.source}); a warm start keeps the "
            "heads, so the label schema must be the same (train from the base instead)")
    if start.base_model != config.base:
        raise ReviewlensError(f"{where}: it was trained on base {start.base_model!r}, this config says "
                              f"{config.base!r}")


def _distributed_state():
    """accelerate's PartialState under torchrun / accelerate launch (WORLD_SIZE > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def calibrate(scorer, validation: ReviewDataset, min_support: int = 5, clause_weight: float | None = None
              ) -> tuple[dict[str, float], float, dict]:
    """Fit on labeled validation data what a bundle decides after training: each keyword's threshold
    (``calibration.fit_thresholds``), then the clause weight of its levels (``clause_sentiment``; a given
    ``clause_weight`` is kept). Returns (thresholds, clause weight, metrics with the validation summary and
    the validation pipeline F1 of each clause weight tried)."""
    from .evaluation import evaluate_scorer, scoring_pairs

    if clause_weight is not None and not 0 <= clause_weight <= 1:
        raise ReviewlensError(f"clause_weight must be between 0 and 1 (or unset, to choose it), not {clause_weight}")
    keywords = validation.schema.keywords
    probs = scorer.keyword_probs(validation.texts)
    truth = np.array([e.targets for e in keyword_examples(validation)])
    thresholds = fit_thresholds(probs, truth, keywords, min_support)
    pairs = scoring_pairs(validation, probs, thresholds)[2]
    sentiment = pair_sentiment(scorer, validation.texts, pairs, keywords, read_clause=clause_weight != 0)

    def result(weight: float):
        return evaluate_scorer(scorer, validation, thresholds, probs, weight, sentiment)

    metrics = {}
    if clause_weight is None:
        clause_weight, scores = fit_clause_weight(lambda w: result(w).summary()["pipeline_f1"])
        metrics["clause_weight_pipeline_f1"] = {str(w): round(f, 4) for w, f in scores.items()}
        logger.info("clause weight %s (validation pipeline F1 by weight: %s)", clause_weight, scores)
    metrics = {"validation": result(clause_weight).summary(), **metrics}
    return thresholds, float(clause_weight), metrics


def calibrate_bundle(path: str | Path, validation: ReviewDataset, clause_weight: float | None = None) -> ModelBundle:
    """Refit a saved bundle's thresholds and clause weight on ``validation`` and rewrite its manifest."""
    from .analyzer import ReviewAnalyzer

    analyzer = ReviewAnalyzer.from_pretrained(path)
    bundle = analyzer.bundle
    if bundle.kind != "classifier":
        raise ReviewlensError(f"{path}: only classifier bundles have thresholds and a clause weight to calibrate")
    if not len(validation):
        raise ReviewlensError(f"{validation.source}: no reviews to calibrate on")
    min_support = int(bundle.config.get("threshold_min_support", 5))
    bundle.thresholds, bundle.clause_weight, metrics = calibrate(analyzer.scorer, validation, min_support,
                                                                 clause_weight)
    bundle.metrics.update(metrics)
    bundle.write_manifest()
    return bundle


def train(dataset: ReviewDataset, output_dir: str | Path, config: TrainConfig | None = None,
          validation: ReviewDataset | None = None, *, resume: bool = False) -> ModelBundle:
    """Train both models, calibrate keyword thresholds on validation data and save a bundle.

    Checkpoints go to ``config.checkpoint_dir`` (default ``<output_dir>.checkpoints``), which is removed once the
    bundle is written; ``resume`` continues an interrupted run from them. Under torchrun / accelerate launch
    every process trains, and the main process alone calibrates and writes the bundle.
    """
    from .scoring import TorchScorer

    config = config or TrainConfig()
    if not dataset.labeled:
        raise ReviewlensError(f"{dataset.source}: every training review needs labels")
    if config.init_from:
        _check_warm_start(ModelBundle.load(config.init_from), dataset, config)
    for task in ("keyword", "sentiment"):
        if not getattr(config, f"{task}_epochs") and not config.init_from:
            raise ReviewlensError(f"{task}_epochs is 0: nothing to train (0 epochs keeps a warm start's model, "
                                  "with init_from)")
    if config.span_examples and not span_sentiment_examples(dataset):
        raise ReviewlensError(f"{dataset.source}: span_examples is set, but no review has gold mention spans "
                              "(AI Hub aspects with 'span', NIKL annotations with a target)")
    if validation is None:
        dataset, validation = train_validation_split(dataset, config.validation_size, config.seed)
    validation.schema = dataset.schema
    state = _distributed_state()
    is_main = state is None or state.is_main_process
    workdir = Path(config.checkpoint_dir) if config.checkpoint_dir else default_checkpoint_dir(output_dir)
    if is_main:
        _prepare_checkpoints(workdir, _run_info(dataset, validation, config), resume)
    if state is not None:
        state.wait_for_everyone()
    logger.info("training the keyword model on %d reviews", len(dataset))
    kw_model, kw_tok = train_keyword_model(dataset, validation, config, workdir, resume)
    logger.info("training the sentiment model")
    st_model, st_tok = train_sentiment_model(dataset, validation, config, workdir, resume)
    if not is_main:
        state.wait_for_everyone()  # the main process calibrates and writes the bundle
        return ModelBundle.load(output_dir)
    scorer = TorchScorer(kw_model, kw_tok, st_model, st_tok, template=SENTIMENT_TEMPLATE)
    thresholds, clause_weight, metrics = {}, config.clause_weight or 0.0, {}
    if len(validation):
        thresholds, clause_weight, metrics = calibrate(scorer, validation, config.threshold_min_support,
                                                       config.clause_weight)
    bundle = ModelBundle(schema=dataset.schema, thresholds=thresholds, clause_weight=clause_weight,
                         templates=dict(TEMPLATES),
                         base_model=config.base, metrics=metrics, data_hash=dataset.fingerprint(),
                         config=asdict(config))
    bundle.save(output_dir, {"keyword": lambda d: save_classifier(kw_model, kw_tok, d),
                             "sentiment": lambda d: save_classifier(st_model, st_tok, d)})
    shutil.rmtree(workdir, ignore_errors=True)
    if state is not None:
        state.wait_for_everyone()
    return bundle
