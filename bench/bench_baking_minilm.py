"""Baked all-MiniLM-L6-v2 against the original ``SentenceTransformer.encode``, in one run.

Target (issue 6): encode throughput at batch 32 on CPU >= 2x the original while the Spearman rho
of pairwise cosine similarities over 500+ held-out pairs stays >= 0.99, mean/min cosine fidelity
beside it.

What it does:
1. Encodes every text of the held-out pairs (flowstone/baking/data/minilm_fidelity_pairs.json)
   with the original, then builds each recipe with flowstone.baking.onnx and reports fidelity
   (rho, mean/min cosine: flowstone.baking.fidelity, the math the bake's quality check uses)
   and size on disk.
2. Throughput: a third of the pair texts (every third in length order, so all lengths are
   covered; 334 texts) is cut into blocks of 4 batches; each block is one encode(batch_size=32)
   call. Within a pass every block is run by the original and by every recipe in a shuffled
   order, so all sides see the same machine load; a side's speedup is original time / its time
   within the same pass, and the figure printed is the median over passes (range beside it).
   Same thread count on both sides (torch.get_num_threads() == ORT intra-op threads).
3. The recommended recipe is then timed alone against the original (fewer sessions competing
   for cache), end to end, model only (tokenised in advance) and tokenisation only.

Environment:
  BAKE_BENCH_RECIPES   "all" (default), "recommended", or a comma list of recipe names
  BAKE_BENCH_PASSES    timing passes of the headline (default 5; the curve gets 2 fewer)
  BAKE_BENCH_WORKDIR   keep the built .onnx files there (default: a temporary folder)
  BAKE_BENCH_BUDGET_S  stop adding timing passes after this many seconds (default 270; the
                       curve keeps >= 2 passes, the headline >= 3)

Other modes:
  --write-pairs    rebuild the pairs file from suites/*.jsonl (deterministic, no downloads)
  --sensitivity    per-node exclusion sweep on the *tuning* sentences (model card, README.md,
                   bench/README.md): how the exclusion lists below were chosen, never on the pairs
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from flowstone.baking.fidelity import (  # noqa: E402
    FIDELITY_PAIRS,
    FidelityReport,
    cosine_fidelity,
    fidelity_report,
    load_fidelity_pairs,
)
from flowstone.baking.onnx.export import export_transformer_onnx  # noqa: E402
from flowstone.baking.onnx.optimize import optimize_onnx  # noqa: E402
from flowstone.baking.onnx.quantize import quantize_onnx  # noqa: E402
from flowstone.baking.onnx.recipe import SENSITIVE_NODES, recommended_recipe  # noqa: E402
from flowstone.baking.onnx.runtime import OnnxEmbedder  # noqa: E402

BATCH = 32

# Exclusions come from the per-node sweep (--sensitivity), ranked in SENSITIVE_NODES.
SENSITIVE = list(SENSITIVE_NODES)
FFN_OUT_ALL = ["*/output/dense/MatMul"]  # the attention output dense is ".../attention/output/..."
DYN_PC = {"per_channel": True, "op_types": ["MatMul"]}  # plain graph: weight MatMuls only
NBITS8 = {"per_channel": True, "method": "matmul_nbits"}  # int8 blocks of 32, accuracy_level 4

# name -> (base graph, quantisation steps). "export" is the plain exported graph, "fused" the
# transformer-optimizer output. Steps are quantize_onnx keyword arguments, applied in order. The
# recommended recipe is added from recommended_recipe() by recommended_name().
RECIPES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "ort-fp32": ("export", []),
    "ort-fp32-fused": ("fused", []),
    "ort-fused-dyn-per-tensor": ("fused", [{"per_channel": False}]),
    "ort-fused-dyn-per-channel": ("fused", [{"per_channel": True}]),
    "ort-dyn-per-channel": ("export", [DYN_PC]),
    "ort-dyn-per-channel-reduce-range": ("export", [{**DYN_PC, "reduce_range": True}]),
    "ort-dyn-per-channel-fp32-2-sensitive": (
        "export",
        [{**DYN_PC, "exclude_nodes": SENSITIVE[:2]}],
    ),
    "ort-dyn-per-channel-fp32-4-sensitive": ("export", [{**DYN_PC, "exclude_nodes": SENSITIVE}]),
    "ort-dyn-per-channel-fp32-all-ffn-out": ("export", [{**DYN_PC, "exclude_nodes": FFN_OUT_ALL}]),
    "ort-dyn-per-channel+nbits8-4-sensitive": (
        "export",
        [{**DYN_PC, "exclude_nodes": SENSITIVE}, NBITS8],  # the 4 float MatMuls -> MatMulNBits
    ),
    "ort-fused-nbits8": ("fused", [NBITS8]),
}
TORCH_PEER = "torch-dyn-per-channel"  # the reference point, same process


def recommended_name() -> str:
    """Register the module's recommended recipe, read step by step as the pass runner would."""
    recipe = recommended_recipe()
    base, steps = "export", []
    for step in recipe["steps"]:
        if step["step"] == "optimize":
            base = "fused"
        elif step["step"] == "quantize":
            steps.append(dict(step["options"]))
    RECIPES[recipe["name"]] = (base, steps)
    return recipe["name"]


# --------------------------------------------------------------------------- held-out pairs


def _perturb(text: str, rng: random.Random, vocab: list[str]) -> tuple[str, str]:
    words = text.split()
    kind = rng.choice(["drop", "swap", "substitute", "truncate", "frame", "plain", "shuffle"])
    if len(words) < 4 and kind in ("drop", "truncate", "shuffle"):
        kind = "frame"
    if kind == "drop":
        del words[rng.randrange(len(words))]
    elif kind == "swap" and len(words) > 1:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == "substitute":
        for _ in range(max(1, len(words) // 6)):
            words[rng.randrange(len(words))] = rng.choice(vocab)
    elif kind == "truncate":
        words = words[: max(2, int(len(words) * rng.uniform(0.4, 0.8)))]
    elif kind == "frame":
        words = (
            rng.choice(["In short,", "Reportedly,", "As far as we know,", "To be clear,"]).split()
            + words
        )
    elif kind == "plain":
        words = re.sub(r"[^\w\s]", "", text.lower()).split()
    elif kind == "shuffle":
        rng.shuffle(words)
    return " ".join(words), kind


def build_pairs(seed: int = 6) -> dict[str, Any]:
    """Held-out pairs from the shipped suites: the suites' own pairs (input/expected/context),
    adjacent sentences of one document, each sentence against a deterministic perturbation of
    itself (drop, swap, substitute, truncate, frame, plain, shuffle), and random pairs."""
    from flowstone.text import sentences

    rng = random.Random(seed)
    texts: dict[str, int] = {}
    pairs: list[list[Any]] = []

    def add(a: str, b: str, kind: str) -> None:
        if a and b and a != b:
            pairs.append([texts.setdefault(a, len(texts)), texts.setdefault(b, len(texts)), kind])

    per_doc = []
    for path in sorted((REPO / "suites").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            case = json.loads(line)
            add(case["input"], case["expected"], "suite:input-expected")
            if case.get("context"):
                add(case["input"], case["context"], "suite:input-context")
                add(case["expected"], case["context"], "suite:expected-context")
            doc = [
                s
                for f in ("input", "expected", "context")
                if case.get(f)
                for s in sentences(case[f])
            ]
            per_doc.append(doc)
            for a, b in zip(doc, doc[1:], strict=False):
                add(a, b, "same-document")
    all_sentences = list(dict.fromkeys(s for doc in per_doc for s in doc))
    vocab = sorted({w for s in all_sentences for w in re.findall(r"[a-z]{4,}", s.lower())})
    for sentence in all_sentences:
        perturbed, kind = _perturb(sentence, rng, vocab)
        add(sentence, perturbed, f"perturbed:{kind}")
    pool = list(texts)
    for _ in range(250):
        a, b = rng.sample(pool, 2)
        add(a, b, "random")
    return {
        "about": "Held-out pairs for baking fidelity, built by bench/bench_baking_minilm.py "
        "--write-pairs from suites/*.jsonl (seed 6). Not used to tune any recipe.",
        "texts": list(texts),
        "pairs": pairs,
    }


def tuning_sentences() -> list[str]:
    """Sentences for choosing exclusions: the model card and the repo's prose, never the pairs."""
    from flowstone.evaluation.embedding import model_path
    from flowstone.text import sentences

    sources = [model_path() / "README.md", REPO / "README.md", REPO / "bench" / "README.md"]
    out: list[str] = []
    for source in sources:
        text = re.sub(r"```.*?```", "", source.read_text(), flags=re.S)
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(line.strip(" -*#>|") for line in para.splitlines())
            out.extend(s for s in sentences(para) if 4 <= len(s.split()) <= 80)
    held_out = set(json.loads(FIDELITY_PAIRS.read_text())["texts"])
    return [s for s in dict.fromkeys(out) if s not in held_out]


# --------------------------------------------------------------------------- building


def build_recipe(name: str, work: Path, bases: dict[str, Path]) -> Path:
    base, steps = RECIPES[name]
    current = bases[base]
    for index, step in enumerate(steps):
        options = dict(step)
        out = work / f"{name}.step{index}.onnx"
        quantize_onnx(
            current,
            out,
            per_channel=options.pop("per_channel"),
            exclude_nodes=options.pop("exclude_nodes", None),
            **options,
        )
        current = out
    return current


def build_bases(model_dir: Path, work: Path, need_fused: bool = True) -> dict[str, Path]:
    exported = work / "export.onnx"
    if not exported.exists():
        export_transformer_onnx(model_dir, exported)
    bases = {"export": exported}
    if need_fused:
        fused = work / "fused.onnx"
        if not fused.exists():
            optimize_onnx(exported, fused)
        bases["fused"] = fused
    return bases


def torch_peer(model: Any) -> Any:
    import copy
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear: per_channel_dynamic_qconfig}
        )


# --------------------------------------------------------------------------- timing


def interleaved(
    fns: dict[str, Any],
    blocks: int,
    passes: int,
    seed: int = 0,
    deadline: float = float("inf"),
    min_passes: int = 1,
) -> dict[str, list[float]]:
    """Seconds per side per pass. ``fns[name](block)`` runs one block of the workload. Within a
    pass, each block is run by every side in a new shuffled order, so all sides see the same
    spread of machine load (other engineers share these 2 cores). A 20 ms pause before each timed
    call lets the previous side's spinning worker threads (OpenMP, ORT's pool) go idle, so one
    runtime's threads do not steal the next one's cores. Stops after ``min_passes`` once
    time.perf_counter() passes ``deadline`` (a loaded machine must not stretch the run)."""
    rng = random.Random(seed)
    totals: dict[str, list[float]] = {name: [] for name in fns}
    for index in range(passes):
        acc = dict.fromkeys(fns, 0.0)
        for block in range(blocks):
            order = list(fns)
            rng.shuffle(order)
            for name in order:
                time.sleep(0.02)
                start = time.perf_counter()
                fns[name](block)
                acc[name] += time.perf_counter() - start
        for name in fns:
            totals[name].append(acc[name])
        print(f"  pass {index + 1}/{passes}, load {os.getloadavg()[0]:.2f}", flush=True)
        if index + 1 >= min_passes and time.perf_counter() > deadline:
            print(f"  time budget reached: stopping after {index + 1} passes")
            break
    return totals


def ratios(totals: dict[str, list[float]], peer: str) -> dict[str, list[float]]:
    """Per-pass speedups against ``peer`` (same pass, so same load)."""
    return {
        name: [p / s for p, s in zip(totals[peer], runs, strict=True)]
        for name, runs in totals.items()
    }


def select_recipes() -> tuple[list[str], str]:
    selection = os.environ.get("BAKE_BENCH_RECIPES", "all")
    recommended = recommended_name()
    if selection == "all":
        names = [*RECIPES, TORCH_PEER]
    elif selection == "recommended":
        names = [recommended]
    else:
        names = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = [n for n in names if n not in RECIPES and n != TORCH_PEER]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; known: {[*RECIPES, TORCH_PEER]}")
    if recommended not in names:
        names.insert(0, recommended)
    return names, recommended


def main_bench() -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    from flowstone.evaluation.embedding import model_path

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    passes = int(os.environ.get("BAKE_BENCH_PASSES", "5"))
    curve_passes = max(1, passes - 2)
    budget = float(os.environ.get("BAKE_BENCH_BUDGET_S", "270"))
    names, recommended = select_recipes()
    model_dir = model_path()
    texts, pairs = load_fidelity_pairs()
    print(f"load average at start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    original = SentenceTransformer(str(model_dir), device="cpu")
    reference = original.encode(texts, batch_size=BATCH, show_progress_bar=False)
    threads = torch.get_num_threads()
    print(
        f"{len(texts)} texts, {len(pairs)} held-out pairs; batch {BATCH}; torch threads {threads}"
    )

    tmp = None
    if os.environ.get("BAKE_BENCH_WORKDIR"):
        work = Path(os.environ["BAKE_BENCH_WORKDIR"])
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bake-minilm-")
        work = Path(tmp.name)
    start = time.perf_counter()
    need_fused = any(RECIPES[n][0] == "fused" for n in names if n in RECIPES)
    bases = build_bases(model_dir, work, need_fused)
    print(f"export{' + optimize' if need_fused else ''}: {time.perf_counter() - start:.1f} s")

    # the timing workload: every third text in sentence-transformers' length order (all lengths)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    subset = [texts[i] for i in order[::3]]
    encoders: dict[str, Any] = {"original": st_encoder(original)}
    rows: dict[str, FidelityReport] = {}
    sizes: dict[str, float | None] = {}  # MB on disk (None: the torch peer has no file)
    embedders: dict[str, OnnxEmbedder] = {}
    for name in names:
        start = time.perf_counter()
        if name == TORCH_PEER:
            peer = torch_peer(original)
            encoders[name] = st_encoder(peer)
            size = None
        else:
            path = build_recipe(name, work, bases)
            embedders[name] = OnnxEmbedder(model_dir, path, threads=threads)
            encoders[name] = lambda texts, e=embedders[name]: e.encode(texts, batch_size=BATCH)
            size = path.stat().st_size
        baked = encoders[name](texts)
        rows[name] = fidelity_report(reference, baked, pairs)
        sizes[name] = size and size / 1e6
        print(
            f"built {name} in {time.perf_counter() - start:.1f} s: rho {rows[name].spearman_rho:.5f}"
        )
    print(f"ORT intra-op threads {sorted({e.threads for e in embedders.values()})}, inter-op 1")

    # blocks of 4 batches: long enough to run warm, short enough to interleave finely
    blocks = [subset[k : k + 4 * BATCH] for k in range(0, len(subset), 4 * BATCH)]
    fns = {name: (lambda b, enc=enc: enc(blocks[b])) for name, enc in encoders.items()}
    for fn in fns.values():
        fn(0)  # warm-up
    print(
        f"\nend-to-end timing: encode(batch_size={BATCH}) over {len(subset)} texts in "
        f"{len(blocks)} blocks, {curve_passes} passes"
    )
    totals = interleaved(
        fns, len(blocks), curve_passes, deadline=started + 0.7 * budget, min_passes=2
    )
    speed = ratios(totals, "original")

    # headline: the recommended recipe alone against the original, end to end and model only
    embedder = embedders[recommended]
    st_tokenize = getattr(original, "preprocess", original.tokenize)  # ST >= 6 renamed it
    batches = [
        [block[k : k + BATCH] for k in range(0, len(block), BATCH)] for block in blocks
    ]  # the batches encode() forms: each block is already in length order
    st_features = [[st_tokenize(batch) for batch in block] for block in batches]
    ort_features = [[embedder.tokenize(batch) for batch in block] for block in batches]

    def st_model_only(b: int) -> None:
        with torch.inference_mode():
            for features in st_features[b]:
                original.forward(dict(features))["sentence_embedding"].numpy()

    head = {
        "original e2e": fns["original"],
        "baked e2e": fns[recommended],
        "original model-only": st_model_only,
        "baked model-only": lambda b: [embedder.embed_tokens(f) for f in ort_features[b]],
        "original tokenize": lambda b: [st_tokenize(batch) for batch in batches[b]],
        "baked tokenize": lambda b: [embedder.tokenize(batch) for batch in batches[b]],
    }
    print(f"\nheadline timing ({recommended} vs original only), {passes} passes")
    head_totals = interleaved(
        head, len(blocks), passes, seed=1, deadline=started + budget, min_passes=3
    )

    n = len(subset)
    print(
        f"\n== trade-off curve: batch {BATCH}, {threads} threads both sides, median of {len(totals['original'])} passes =="
    )
    print(
        f"{'recipe':46s} {'texts/s':>8s} {'speedup':>8s} {'range':>12s} {'rho':>8s} "
        f"{'rho kind':>8s} {'cos mean':>9s} {'cos min':>8s} {'MB':>6s}"
    )
    print(
        f"{'original SentenceTransformer.encode':46s} {n / statistics.median(totals['original']):8.1f} {1.0:7.2f}x"
    )
    for name in names:
        row, sp = rows[name], speed[name]
        size = f"{sizes[name]:6.1f}" if sizes[name] else "     -"
        print(
            f"{name + (' *' if name == recommended else ''):46s} "
            f"{n / statistics.median(totals[name]):8.1f} {statistics.median(sp):7.2f}x "
            f"{min(sp):5.2f}-{max(sp):5.2f}x {row.spearman_rho:8.5f} "
            f"{row.spearman_rho_min_by_kind:8.4f} {row.cosine_mean:9.5f} "
            f"{row.cosine_min:8.5f} {size}"
        )
    print("(rho kind: the lowest Spearman rho within one kind of pair; * recommended)")
    med = {name: statistics.median(runs) for name, runs in head_totals.items()}
    e2e = ratios(head_totals, "original e2e")["baked e2e"]
    model_only = ratios(head_totals, "original model-only")["baked model-only"]
    row = rows[recommended]
    print(f"\n== recommended: {recommended} ==")
    print(
        f"end to end : original {n / med['original e2e']:.1f} texts/s, baked {n / med['baked e2e']:.1f} "
        f"texts/s, ratio {statistics.median(e2e):.2f}x at batch {BATCH} (passes "
        f"{', '.join(f'{r:.2f}' for r in e2e)}; target >= 2x)"
    )
    print(
        f"model only : {statistics.median(model_only):.2f}x (passes {', '.join(f'{r:.2f}' for r in model_only)})"
    )
    print(
        f"tokenize   : original {med['original tokenize'] * 1e3:.0f} ms, baked "
        f"{med['baked tokenize'] * 1e3:.0f} ms for {n} texts = "
        f"{100 * med['original tokenize'] / med['original e2e']:.1f}% / "
        f"{100 * med['baked tokenize'] / med['baked e2e']:.1f}% of each side's end-to-end time"
    )
    kinds = ", ".join(f"{k} {v:.4f}" for k, v in row.spearman_rho_by_kind.items())
    print(
        f"fidelity   : Spearman rho {row.spearman_rho:.5f} over {row.pairs} held-out pairs "
        f"(target >= 0.99); within kinds: {kinds}; cosine mean {row.cosine_mean:.5f}, "
        f"min {row.cosine_min:.5f}; largest pair-similarity change "
        f"{row.pair_similarity_max_abs_change:.4f}"
    )
    print(
        f"size       : {sizes[recommended]:.1f} MB (fp32 export {bases['export'].stat().st_size / 1e6:.1f} MB)"
    )
    print(f"threads    : torch {threads}, ORT intra-op {embedder.threads}")
    print(
        f"load average at end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])} "
        f"on {os.cpu_count()} CPUs; total {time.perf_counter() - started:.0f} s"
    )
    if tmp is not None:
        tmp.cleanup()


def st_encoder(model: Any) -> Any:
    """SentenceTransformer.encode at batch 32 with its defaults (sorted by length, normalised by
    the model's Normalize module, numpy out)."""
    return lambda texts: model.encode(texts, batch_size=BATCH, show_progress_bar=False)


def main_sensitivity() -> None:
    """On the plain exported graph the recipe quantises: for each weight MatMul, quantise all
    but that one (dynamic, per channel) and see how much cosine fidelity comes back."""
    import onnx
    from sentence_transformers import SentenceTransformer

    from flowstone.evaluation.embedding import model_path

    model_dir = model_path()
    tuning = tuning_sentences()
    original = SentenceTransformer(str(model_dir), device="cpu")
    reference = original.encode(tuning, batch_size=BATCH, show_progress_bar=False)
    with tempfile.TemporaryDirectory(prefix="bake-sens-") as tmp:
        work = Path(tmp)
        exported = build_bases(model_dir, work, need_fused=False)["export"]
        graph = onnx.load(str(exported), load_external_data=False).graph
        weights = {init.name for init in graph.initializer}
        nodes = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]

        def cosine(exclude: list[str]) -> tuple[float, float]:
            out = work / "q.onnx"
            quantize_onnx(exported, out, **DYN_PC, exclude_nodes=exclude)
            baked = OnnxEmbedder(model_dir, out).encode(tuning, batch_size=BATCH)
            cos = cosine_fidelity(reference, baked)
            return float(cos.mean()), float(cos.min())

        base_mean, base_min = cosine([])
        print(
            f"{len(tuning)} tuning sentences, {len(nodes)} weight MatMuls; all quantised "
            f"(dynamic, per channel): cosine mean {base_mean:.5f} min {base_min:.5f}"
        )
        results = [(name, *cosine([name])) for name in nodes]
        for name, mean, low in sorted(results, key=lambda r: -r[1]):
            print(f"keep fp32 {name:58s} mean {mean:.5f} ({mean - base_mean:+.5f}) min {low:.5f}")


if __name__ == "__main__":
    if "--write-pairs" in sys.argv:
        FIDELITY_PAIRS.parent.mkdir(parents=True, exist_ok=True)
        data = build_pairs()
        FIDELITY_PAIRS.write_text(json.dumps(data, ensure_ascii=False) + "\n")
        print(f"wrote {FIDELITY_PAIRS}: {len(data['texts'])} texts, {len(data['pairs'])} pairs")
    elif "--sensitivity" in sys.argv:
        main_sensitivity()
    else:
        main_bench()
