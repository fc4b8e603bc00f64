"""The generative baseline: a causal LM taught, through a peft adapter, to answer the seed's instruction prompt.

The seed first tried this and moved to classifiers. Each review becomes one example::

    ###입력: 옷은 예쁘지만 배송은 늦어요 \\n###명령어: 리뷰를 분석해줘 \\n###출력: 디자인 1, 배송 -1<eos>

(the prompt template is ``tasks.GENERATIVE_PROMPT_TEMPLATE``, the completion is ``LabelSchema.format``). Only the
completion and the end-of-sequence token are learned: ``CompletionOnlyCollator`` gives every prompt token the
label -100. Batches are left-padded, as at generation time, so every completion ends at the right edge and
only the last few positions need the language-model head (``logits_to_keep``): with a 262k vocabulary
(Gemma 3) that head costs more than the rest of the model.

Inference is batched greedy decoding with left padding and a KV cache; ``parse_completion`` reads each output
back with the bundle's LabelSchema and never raises: malformed items, unknown keywords, levels outside the
schema, one keyword given two levels and outputs cut off at ``max_new_tokens`` are counted and reported.

A generative bundle is a ModelBundle of ``kind="generative"``::

    bundle/
      reviewlens.json    schema, templates, base model, the GenerativeConfig, metrics
      generator/         peft adapter, tokenizer, base.json (the base to rebuild the model from)
"""

from __future__ import annotations

import inspect
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .analyzer import KeywordResult, ReviewAnalysis, has_content
from .bundle import ModelBundle
from .data import ReviewDataset
from .errors import LabelError, ModelError, ReviewlensError, require
from .evaluation import EvaluationResult, _headline, evaluate_predictions
from .metrics import sentiment_confusion, sentiment_report
from .schema import LabelSchema
from .tasks import GENERATIVE_PROMPT_TEMPLATE, TEMPLATES, generative_examples, generative_prompt

logger = logging.getLogger(__name__)

PEFT_METHODS = ("lora", "ia3", "prefix", "prompt")
DEFAULT_LEARNING_RATES = {"lora": 2e-4, "ia3": 3e-3, "prefix": 1e-2, "prompt": 3e-2}
"""Per-method defaults: the adapters with fewer parameters need larger steps."""
GENERATOR_DIR = "generator"
BASE_RECORD = "base.json"
EXTRA = "generative"


@dataclass
class GenerativeConfig:
    """Every setting of the generative baseline, with defaults that work. A YAML file may set any field."""

    base: str = "gemma-3-270m"
    peft: str = "lora"
    lora_r: int = 8
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # None: peft's defaults for the model type (q_proj, v_proj, ...)
    num_virtual_tokens: int = 16  # prefix and prompt tuning
    epochs: float = 3.0
    learning_rate: float | None = None  # None: DEFAULT_LEARNING_RATES[peft]
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_length: int = 256  # prompt + completion tokens; long reviews lose their middle
    max_new_tokens: int | None = None  # None: the longest training completion plus 8 tokens
    generation_batch_size: int = 16
    group_by_length: bool = True
    report_to: str = "none"
    seed: int = 42
    logging_steps: int = 10
    aliases: dict[str, str] = field(default_factory=dict)
    levels: list[int] | None = None

    def __post_init__(self) -> None:
        if self.peft not in PEFT_METHODS:
            raise ReviewlensError(f"peft must be one of {', '.join(PEFT_METHODS)}, not {self.peft!r}")

    @property
    def resolved_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.peft]

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **overrides) -> "GenerativeConfig":
        """Defaults, then the YAML file's fields, then the non-None ``overrides`` (as ``TrainConfig.from_yaml``)."""
        from .training import TrainConfig

        return TrainConfig.from_yaml.__func__(cls, path, **overrides)


# -- examples and the collator ----------------------------------------------------------------------------------


def _template_tail(template: str) -> str:
    return template.split("{review}", 1)[1] if "{review}" in template else ""


def prompt_ids(tokenizer, prompt: str, max_tokens: int, template: str = GENERATIVE_PROMPT_TEMPLATE) -> list[int]:
    """Token ids of a formatted prompt (with the tokenizer's BOS); a too long prompt loses its middle (the review's
    end), keeping the instruction tail so the model still sees where to answer."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if len(ids) <= max_tokens:
        return ids
    tail = len(tokenizer(_template_tail(template), add_special_tokens=False)["input_ids"]) + 1
    tail = min(tail, max_tokens // 2)
    return ids[:max_tokens - tail] + ids[-tail:]


def completion_ids(tokenizer, completion: str) -> list[int]:
    """Token ids of a completion string followed by the end-of-sequence token."""
    return tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_examples(tokenizer, dataset: ReviewDataset, max_length: int,
                    template: str = GENERATIVE_PROMPT_TEMPLATE) -> list[dict]:
    """``{"input_ids", "prompt_length"}`` per review: prompt then completion; the completion is never cut."""
    out = []
    for prompt, completion in generative_examples(dataset, template):
        answer = completion_ids(tokenizer, completion)
        prompt_part = prompt_ids(tokenizer, prompt, max(8, max_length - len(answer)), template)
        out.append({"input_ids": prompt_part + answer, "prompt_length": len(prompt_part)})
    return out


@dataclass
class CompletionOnlyCollator:
    """Left-pads examples and masks the prompt out of the loss.

    Labels are the input ids on completion tokens and -100 on prompt and padding tokens. With
    ``logits_to_keep`` the batch asks the model for the logits of the last positions only (the longest
    completion plus one); ``completion_loss`` aligns them with the labels. ``position_ids`` count real tokens
    only, as the analyzer's decoding does, so a review's positions do not depend on its batch; leave them
    off for prompt tuning (peft ignores them there).
    """

    pad_token_id: int
    logits_to_keep: bool = True
    position_ids: bool = True

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), length), dtype=torch.long)
        labels = torch.full((len(features), length), -100, dtype=torch.long)
        longest_answer = 1
        for row, feature in enumerate(features):
            tokens = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            start = length - len(tokens)
            ids[row, start:] = tokens
            mask[row, start:] = 1
            answer_start = start + int(feature["prompt_length"])
            labels[row, answer_start:] = tokens[int(feature["prompt_length"]):]
            longest_answer = max(longest_answer, length - answer_start)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.position_ids:
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.logits_to_keep:
            batch["logits_to_keep"] = min(length, longest_answer + 1)
        return batch


def completion_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Next-token cross-entropy over the labeled (completion) tokens, from the last ``n`` positions' logits.

    The logits may cover every position, the last few (``logits_to_keep``), or more positions than the labels
    (prompt tuning puts virtual tokens in front); in each case they end where the labels end.
    """
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    k = min(logits.shape[1] - 1, labels.shape[1])
    predicted = logits[:, -(k + 1):-1, :].float()
    target = labels[:, -k:].to(predicted.device)
    loss = torch.nn.functional.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), target.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (target != -100).sum()
    return loss / torch.as_tensor(count, device=loss.device).clamp(min=1)


def _forward_parameters(model) -> set[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(type(base).forward).parameters)


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in _forward_parameters(model)


def _cache_argument(model) -> str:
    """The name under which the model takes its KV cache (``cache`` in transformers 5, else ``past_key_values``)."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


# -- the adapter -------------------------------------------------------------------------------------------------


def attach_adapter(model, config: GenerativeConfig, tokenizer_path: str | None = None):
    """Wrap a causal LM in the peft adapter ``config.peft`` names (only the adapter trains)."""
    peft = require("peft", EXTRA)
    task = peft.TaskType.CAUSAL_LM
    targets = list(config.target_modules) if config.target_modules else None
    if config.peft == "lora":
        adapter = peft.LoraConfig(task_type=task, r=config.lora_r, lora_alpha=config.lora_alpha or 2 * config.lora_r,
                                  lora_dropout=config.lora_dropout, target_modules=targets, bias="none")
    elif config.peft == "ia3":
        adapter = peft.IA3Config(task_type=task, target_modules=targets, feedforward_modules=[] if targets else None)
    elif config.peft == "prefix":
        adapter = peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=config.num_virtual_tokens)
    else:
        init = {}
        if tokenizer_path:  # start the soft prompt from the instruction's own embeddings
            init = {"prompt_tuning_init": peft.PromptTuningInit.TEXT, "prompt_tuning_init_text": "리뷰를 분석해줘",
                    "tokenizer_name_or_path": tokenizer_path}
        adapter = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=config.num_virtual_tokens, **init)
    try:
        return peft.get_peft_model(model, adapter)
    except ValueError as exc:
        raise ModelError(f"cannot put a {config.peft} adapter on {config.base!r}: {exc}. Set target_modules in the "
                         "config (e.g. [q_proj, v_proj]) for a model type peft does not know.") from exc


# -- training ----------------------------------------------------------------------------------------------------


def _prepare_tokenizer(tokenizer) -> None:
    if tokenizer.eos_token_id is None:
        raise ModelError("the base model's tokenizer has no end-of-sequence token; a completion could not end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding only: labels come from the unpadded examples
    tokenizer.padding_side = "left"


def train_generative(dataset: ReviewDataset, output_dir: str | Path, config: GenerativeConfig | None = None,
                     validation: ReviewDataset | None = None) -> ModelBundle:
    """Fine-tune a peft adapter on (prompt, completion) examples and save a ``generative`` bundle.

    Nothing is held out by default (the generative model has no thresholds to calibrate); with ``validation``
    the saved model is evaluated on it and the summary is stored in the bundle's metrics.
    """
    from transformers import Trainer, TrainingArguments, set_seed

    from .ggufbase import load_causal_lm, resolve_causal_base

    config = config or GenerativeConfig()
    if not dataset.labeled:
        raise ReviewlensError(f"{dataset.source}: every training review needs labels")
    if not len(dataset):
        raise ReviewlensError(f"{dataset.source}: no reviews to train on")
    set_seed(config.seed)
    model, tokenizer = load_causal_lm(config.base)
    _prepare_tokenizer(tokenizer)
    template = GENERATIVE_PROMPT_TEMPLATE
    examples = encode_examples(tokenizer, dataset, config.max_length, template)
    longest = max(len(e["input_ids"]) - e["prompt_length"] for e in examples)
    max_new_tokens = config.max_new_tokens or longest + 8
    model = attach_adapter(model, config, tokenizer_path=resolve_causal_base(config.base))
    collator = CompletionOnlyCollator(tokenizer.pad_token_id, logits_to_keep=_accepts_logits_to_keep(model),
                                      position_ids=config.peft != "prompt")  # peft ignores them for prompt tuning
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reviewlens-generative-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, num_train_epochs=config.epochs, learning_rate=config.resolved_learning_rate,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps, weight_decay=config.weight_decay,
            warmup_steps=config.warmup_ratio, lr_scheduler_type="linear", eval_strategy="no", save_strategy="no",
            report_to=config.report_to, seed=config.seed, logging_steps=config.logging_steps,
            train_sampling_strategy="group_by_length" if config.group_by_length else "random",
            remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator,
                          processing_class=tokenizer, compute_loss_func=completion_loss)
        output = trainer.train()
    model.eval()
    seconds = time.perf_counter() - start
    settings = {**asdict(config), "max_new_tokens": max_new_tokens,
                "learning_rate": config.resolved_learning_rate}
    metrics = {"train": {"reviews": len(dataset), "seconds": round(seconds, 1), "loss": float(output.training_loss),
                         "steps": int(output.global_step),
                         "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}}
    bundle = ModelBundle(schema=dataset.schema, thresholds={}, templates=dict(TEMPLATES), base_model=config.base,
                         kind="generative", metrics=metrics, data_hash=dataset.fingerprint(), config=settings)
    if validation is not None and len(validation):
        validation.schema = dataset.schema
        analyzer = GenerativeAnalyzer(bundle, model, tokenizer, device=str(next(model.parameters()).device))
        result = analyzer.evaluate(validation)
        bundle.metrics["validation"] = {**result.summary(), **result.extra["generation"]["summary"]}
    bundle.save(output_dir, {GENERATOR_DIR: lambda d: save_generator(model, tokenizer, config, d)})
    return bundle


def save_generator(model, tokenizer, config: GenerativeConfig, directory: str | Path) -> None:
    """Write the peft adapter, the tokenizer and the record of the base into ``directory``."""
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    base = str(Path(config.base).resolve()) if Path(config.base).exists() else config.base  # local paths absolute
    record = {"base": base, "peft": config.peft}
    (directory / BASE_RECORD).write_text(json.dumps(record, ensure_ascii=False, indent=2), encoding="utf-8")


def load_generator(directory: str | Path, device: str = "cpu"):
    """Rebuild the base named in ``base.json``, put the saved adapter on it; returns (model in eval mode, tokenizer)."""
    from transformers import AutoTokenizer

    from .ggufbase import load_causal_lm

    directory = Path(directory)
    try:
        record = json.loads((directory / BASE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{directory}: not a generative model directory ({BASE_RECORD} missing or broken: {exc})") \
            from exc
    peft = require("peft", EXTRA)
    model, _ = load_causal_lm(record["base"], tokenizer=False)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    _prepare_tokenizer(tokenizer)
    model = peft.PeftModel.from_pretrained(model, directory)
    if record.get("peft") in ("lora", "ia3"):
        model = model.merge_and_unload()  # plain weights: faster generation, no adapter hooks
    return model.to(device).eval(), tokenizer


# -- reading outputs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParseProblem:
    """Something wrong in one generated completion; ``kind`` is one of PROBLEM_KINDS."""

    kind: str
    item: str
    message: str
    keyword: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


PROBLEM_KINDS = ("malformed", "unknown_keyword", "bad_level", "conflict", "truncated")

_PROBE_LEVELS = list(range(-1000, 1001))


def parse_completion(text: str, schema: LabelSchema, *,
                     finished: bool = True) -> tuple[dict[str, int], list[ParseProblem]]:
    """Read a generated completion into ``{keyword: level}`` with the schema, item by item; never raises.

    Each item (``디자인 1``) is read with ``LabelSchema.parse``; an item it rejects is skipped and reported as
    ``malformed`` (no keyword or level), ``unknown_keyword`` or ``bad_level`` (outside the schema's levels).
    A keyword given two different levels keeps the first (``conflict``). ``finished=False`` (no end token
    before ``max_new_tokens``) adds ``truncated``. An empty completion is valid: no keyword mentioned.
    """
    labels: dict[str, int] = {}
    problems: list[ParseProblem] = []
    if not isinstance(text, str):
        return {}, [ParseProblem("malformed", repr(text), "the output is not text")]
    for item in _split_items(text):
        try:
            parsed = schema.parse(item)
        except LabelError as exc:
            kind, keyword = _classify(item, schema)
            problems.append(ParseProblem(kind, item, str(exc), keyword))
            continue
        for keyword, level in parsed.items():
            if keyword in labels and labels[keyword] != level:
                problems.append(ParseProblem("conflict", item, f"{keyword!r} was already given level {labels[keyword]}",
                                             keyword))
            else:
                labels.setdefault(keyword, level)
    if not finished:
        problems.append(ParseProblem("truncated", text[-40:], "no end-of-sequence token before max_new_tokens"))
    order = {k: i for i, k in enumerate(schema.keywords)}
    return {k: labels[k] for k in sorted(labels, key=order.__getitem__)}, problems


def _split_items(text: str) -> list[str]:
    from .schema import _SEPARATORS

    return [item.strip() for item in _SEPARATORS.split(text) if item.strip()]


def _classify(item: str, schema: LabelSchema) -> tuple[str, str]:
    """Why ``schema.parse`` rejected one item, and its keyword: the same grammar with any keyword and level tells."""
    try:
        probe = LabelSchema([], _PROBE_LEVELS).parse(item, allow_new_keywords=True)
    except LabelError:
        return "malformed", ""
    keyword = next(iter(probe), "")
    if not keyword or schema.canonical(keyword) not in schema.keywords:
        return "unknown_keyword", keyword
    return "bad_level", keyword


# -- the analyzer ------------------------------------------------------------------------------------------------


@dataclass
class Generation:
    """One greedy completion: its text, the mean probability of its tokens, and whether it ended."""

    text: str
    mean_probability: float
    finished: bool
    num_tokens: int


class GenerativeEvaluationResult(EvaluationResult):
    """An EvaluationResult whose Markdown also reports the generation's parse problems."""

    def to_markdown(self) -> str:
        gen = self.extra.get("generation", {}).get("summary", {})
        lines = [super().to_markdown(), "### Generation", "",
                 f"Parse-failure rate {gen.get('parse_failure_rate', 0.0):.3f} "
                 f"({gen.get('reviews_with_problems', 0)} of {gen.get('reviews', 0)} outputs had a problem); "
                 f"problems by kind: {json.dumps(gen.get('problems_by_kind', {}), ensure_ascii=False)}; "
                 f"sentiment scored on {gen.get('sentiment_pairs', 0)} of {gen.get('gold_pairs', 0)} gold "
                 "(review, keyword) pairs, those the model also produced.", ""]
        return "\n".join(lines)


class GenerativeAnalyzer:
    """Analyse reviews with a generative bundle: batched greedy completions, read back with the bundle's schema.

    A generative model gives no per-keyword probability and no highlights. Each keyword's ``probability`` is
    the mean probability of the tokens greedy decoding chose for the review's whole completion (a confidence
    of the generation; the same for every keyword of one review); ``level_probabilities`` is empty (no
    distribution over levels is computed) and ``highlights`` are empty (the seed: a generative model gives
    none). Problems found while parsing the last batch are kept in ``last_problems``.
    """

    def __init__(self, bundle: ModelBundle, model, tokenizer, *, device: str = "cpu",
                 batch_size: int | None = None, max_new_tokens: int | None = None) -> None:
        self.bundle = bundle
        self.schema = bundle.schema
        self.keywords = list(bundle.schema.keywords)  # the attributes ReviewAnalyzer has too
        self.levels = list(bundle.schema.levels)
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        settings = bundle.config or {}
        self.batch_size = batch_size or int(settings.get("generation_batch_size") or 16)
        self.max_new_tokens = max_new_tokens or int(settings.get("max_new_tokens") or 48)
        self.max_length = int(settings.get("max_length") or 256)
        self.template = bundle.templates.get("generative", GENERATIVE_PROMPT_TEMPLATE)
        self.last_problems: list[list[ParseProblem]] = []
        _prepare_tokenizer(tokenizer)

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, device: str = "cpu", **kwargs) -> "GenerativeAnalyzer":
        """Load the generator of a saved ``generative`` bundle."""
        if bundle.kind != "generative":
            raise ModelError(f"{bundle.path}: a {bundle.kind!r} bundle, not a generative one")
        if bundle.path is None or not (bundle.path / GENERATOR_DIR).is_dir():
            raise ModelError(f"{bundle.path}: the generative bundle has no {GENERATOR_DIR}/ folder")
        model, tokenizer = load_generator(bundle.path / GENERATOR_DIR, device)
        return cls(bundle, model, tokenizer, device=device, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", **kwargs) -> "GenerativeAnalyzer":
        return cls.from_bundle(ModelBundle.load(path), device=device, **kwargs)

    # -- generation

    def generate(self, texts: Sequence[str]) -> list[Generation]:
        """Greedy completions of ``texts`` in input order, in length-sorted, left-padded batches."""
        budget = max(8, self.max_length - self.max_new_tokens)
        ids = [prompt_ids(self.tokenizer, generative_prompt(t, self.template), budget, self.template) for t in texts]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out: list[Generation | None] = [None] * len(ids)
        for start in range(0, len(order), self.batch_size):
            rows = [int(i) for i in order[start:start + self.batch_size]]
            for i, generation in zip(rows, self._generate_batch([ids[i] for i in rows])):
                out[i] = generation
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, batch: list[list[int]]) -> list[Generation]:
        """Greedy decoding of one left-padded batch with a KV cache, written out rather than ``generate``.

        peft 0.21's ``generate`` for prompt-learning adapters hands the virtual tokens over under the old
        ``past_key_values`` name, which transformers 5 ignores while generating. Here the prompt goes through
        the (peft) model once; each new token then goes through the underlying model with the cache, which
        already holds the virtual tokens. Positions count real tokens only, as in training (``prompt`` tuning
        excepted: peft ignores position ids there, in training too).
        """
        tok = self.tokenizer
        rows, length = len(batch), max(len(x) for x in batch)
        input_ids = torch.full((rows, length), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, x in enumerate(batch):
            input_ids[row, length - len(x):] = torch.as_tensor(x)
            mask[row, length - len(x):] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        peft_config = getattr(self.model, "active_peft_config", None)
        virtual = peft_config.num_virtual_tokens if peft_config is not None and peft_config.is_prompt_learning else 0
        kind = getattr(getattr(peft_config, "peft_type", None), "value", "") if virtual else ""
        step_model = self.model.get_base_model() if virtual else self.model
        cache_arg = _cache_argument(step_model)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with_positions = kind != "PROMPT_TUNING"
        kwargs = {"use_cache": True, **({"position_ids": positions} if with_positions else {})}
        if _accepts_logits_to_keep(self.model):
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, attention_mask=mask, **kwargs)  # peft offsets prefix positions itself
        next_position = positions[:, -1:] + 1 + (virtual if kind == "PREFIX_TUNING" else 0)
        full_mask = torch.cat([torch.ones((rows, virtual), dtype=mask.dtype, device=mask.device), mask], dim=1)
        finished = torch.zeros(rows, dtype=torch.bool, device=mask.device)
        tokens, probs = [], []
        for step in range(self.max_new_tokens):
            prob, token = torch.softmax(out.logits[:, -1].float(), dim=-1).max(dim=-1)
            token = torch.where(finished, torch.full_like(token, tok.pad_token_id), token)
            tokens.append(token)
            probs.append(prob)
            finished |= token == tok.eos_token_id
            if bool(finished.all()) or step == self.max_new_tokens - 1:
                break
            full_mask = torch.cat([full_mask, torch.ones((rows, 1), dtype=mask.dtype, device=mask.device)], dim=1)
            step_kwargs = {"use_cache": True, cache_arg: _cache_of(out)}
            if with_positions:
                step_kwargs["position_ids"] = next_position
                next_position = next_position + 1
            out = step_model(input_ids=token[:, None], attention_mask=full_mask, **step_kwargs)
        generated = torch.stack(tokens, dim=1).cpu()
        chosen = torch.stack(probs, dim=1).cpu()
        results = []
        for row in range(rows):
            ids = generated[row].tolist()
            ended = tok.eos_token_id in ids
            n = ids.index(tok.eos_token_id) + 1 if ended else len(ids)
            text = tok.decode(ids[:n], skip_special_tokens=True).strip()
            results.append(Generation(text, float(chosen[row, :n].mean()) if n else 0.0, ended, n))
        return results

    # -- analysis and evaluation

    def predict(self, texts: Sequence[str]
                ) -> tuple[list[Generation | None], list[dict[str, int]], list[list[ParseProblem]]]:
        """Generations, parsed labels and parse problems; reviews without letters or digits are not generated."""
        live = [i for i, t in enumerate(texts) if isinstance(t, str) and has_content(t)]
        generations: list[Generation | None] = [None] * len(texts)
        for i, generation in zip(live, self.generate([texts[i] for i in live])):
            generations[i] = generation
        labels, problems = [], []
        for generation in generations:
            if generation is None:
                labels.append({})
                problems.append([])
                continue
            parsed, found = parse_completion(generation.text, self.schema, finished=generation.finished)
            labels.append(parsed)
            problems.append(found)
        self.last_problems = problems
        return generations, labels, problems

    def analyze(self, texts: str | Iterable[str], *, highlights: bool = True, top_k: int = 3,
                ids: Sequence[str] | None = None, sentiment_scope: str = "clause") -> list[ReviewAnalysis]:
        """Keywords and levels from the generated completion; ``highlights``, ``top_k`` and ``sentiment_scope``
        are accepted for the analyzer interface and have no effect (no highlights, see the class docstring)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        generations, labels, problems = self.predict(texts)
        n_bad = sum(1 for p in problems if p)
        if n_bad:
            kinds = Counter(p.kind for found in problems for p in found)
            logger.warning("%d of %d generated completion(s) had problems (%s); the readable items were kept",
                           n_bad, len(texts), ", ".join(f"{k} {n}" for k, n in kinds.items()))
        results = []
        for i, text in enumerate(texts):
            probability = generations[i].mean_probability if generations[i] is not None else 0.0
            keywords = [KeywordResult(kw, probability, level, {}) for kw, level in labels[i].items()]
            results.append(ReviewAnalysis(text, keywords, id=ids[i] if ids is not None else None))
        return results

    def evaluate(self, dataset: ReviewDataset) -> GenerativeEvaluationResult:
        """Keyword, sentiment and pipeline reports of the generated labels, plus parse-problem counts in ``extra``.

        Keyword and pipeline reports are those of the classifiers (``evaluate_predictions``). The sentiment
        report covers the gold (review, keyword) pairs that the model also produced (a generative model
        cannot be asked for the level of a keyword it did not name); ``extra["generation"]`` says how many.
        """
        schema = self.schema
        generations, predicted, problems = self.predict(dataset.texts)
        result = evaluate_predictions(dataset, predicted)
        gold = [r.labels or {} for r in dataset.reviews]
        matched = [(i, kw) for i, g in enumerate(gold) for kw in g if kw in predicted[i]]
        y_true = [schema.level_index(gold[i][kw]) for i, kw in matched]
        y_pred = [schema.level_index(predicted[i][kw]) for i, kw in matched]
        names = schema.level_names()
        if matched:
            sentiment = _headline(sentiment_report(y_true, y_pred, names))
            confusion = sentiment_confusion(y_true, y_pred, len(names))
        else:  # the model named none of the gold keywords: nothing to score (sklearn refuses empty input)
            zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
            sentiment = _headline({**{n: dict(zero) for n in names},
                                   **{avg: dict(zero) for avg in ("micro", "macro", "weighted")}})
            confusion = np.zeros((len(names), len(names)), dtype=int)
        kinds = Counter(p.kind for found in problems for p in found)
        unknown = Counter(p.keyword for found in problems for p in found if p.kind == "unknown_keyword")
        n = len(dataset)
        summary = {
            "reviews": n, "reviews_with_problems": sum(1 for p in problems if p),
            "parse_failure_rate": (sum(1 for p in problems if p) / n) if n else 0.0,
            "problems_by_kind": {k: kinds.get(k, 0) for k in PROBLEM_KINDS},
            "gold_pairs": sum(len(g) for g in gold), "sentiment_pairs": len(matched),
            "mean_generated_tokens": float(np.mean([g.num_tokens for g in generations if g is not None] or [0])),
        }
        examples = [{"id": dataset.reviews[i].id, "output": generations[i].text if generations[i] else "",
                     "problems": [p.to_dict() for p in found]} for i, found in enumerate(problems) if found][:20]
        extra = {"generation": {"summary": summary, "unknown_keywords": dict(unknown.most_common(20)),
                                "examples": examples}}
        return GenerativeEvaluationResult(result["keywords"], sentiment, result["pipeline"], confusion, names, extra)
