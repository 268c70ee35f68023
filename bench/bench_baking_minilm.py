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
3. Headline: our recipe (``ours_recipe()``: flowstone.baking.recipe_search's choice for this host
   (host_recipe(), cached per host; BAKE_BENCH_OURS=recommended for the shipped recipe) and the
   Optimum peer are timed against the original with fewer sessions competing for cache: end to
   end, model only (tokenised in advance) and tokenisation only, interleaved the same way.
   Fidelity to human judgement: Spearman rho of pair cosines against the GOLD scores of
   flowstone/baking/data/sts_gold_pairs.jsonl (lines {"id", "a", "b", "score"}, score 0-5) for
   the original fp32, ours and Optimum's, and each one's drop against fp32. Targets printed with
   PASS/FAIL; a last line ``BENCH_JSON {...}`` carries the figures.

The Optimum peer: Hugging Face Optimum's ONNX Runtime dynamic quantizer (``ORTQuantizer`` with
``AutoQuantizationConfig.avx512_vnni`` where the CPU has AVX512-VNNI, else ``.avx2``;
is_static=False, Optimum's defaults otherwise) on the same model folder. optimum-onnx needs
transformers < 4.58 and the project runs 5.x, so it runs in a venv of its own, bench/.venv-optimum
(gitignored), built on first use from bench/requirements-optimum.txt and rebuilt when that file
changes; bench/optimum_quantize.py exports and quantizes there. The quantized file is then run
here by the same runner as ours (OnnxEmbedder: same tokenizer, batching, mean pooling and L2
normalisation, same ORT thread count).

Environment:
  BAKE_BENCH_RECIPES   "all" (default), "recommended", or a comma list of recipe names
  BAKE_BENCH_PASSES    timing passes of the headline (default 5; the curve gets 2 fewer)
  BAKE_BENCH_WORKDIR   keep the built .onnx files there (default: a temporary folder)
  BAKE_BENCH_BUDGET_S  stop adding timing passes after this many seconds (default 270, not
                       counting a first-use build of the peer venv; the curve keeps >= 2 passes,
                       the headline >= 3)
  BAKE_BENCH_OPTIMUM   "1" (default) runs the Optimum peer, "0" leaves it out
  BAKE_BENCH_GOLD      the gold STS pairs (default flowstone/baking/data/sts_gold_pairs.jsonl)
  BAKE_BENCH_OURS      "search" (default: pipeline.host_recipe(), cached per host) or
                       "recommended" (the shipped recipe)

Other modes:
  --write-pairs    rebuild the pairs file from suites/*.jsonl (deterministic, no downloads)
  --sensitivity    per-node exclusion sweep on the *tuning* sentences (model card, README.md,
                   bench/README.md): how the exclusion lists below were chosen, never on the pairs
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import statistics
import subprocess
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
    DATA_DIR,
    FIDELITY_PAIRS,
    FidelityReport,
    cosine_fidelity,
    fidelity_report,
    load_fidelity_pairs,
    spearman_rho,
)
from flowstone.baking.onnx.export import export_transformer_onnx  # noqa: E402
from flowstone.baking.onnx.optimize import optimize_onnx  # noqa: E402
from flowstone.baking.onnx.quantize import quantize_onnx  # noqa: E402
from flowstone.baking.onnx.recipe import SENSITIVE_NODES, recommended_recipe  # noqa: E402
from flowstone.baking.onnx.runtime import OnnxEmbedder  # noqa: E402

BATCH = 32
GOLD_STS = DATA_DIR / "sts_gold_pairs.jsonl"
BENCH_DIR = REPO / "bench"
OPTIMUM_VENV = BENCH_DIR / ".venv-optimum"
OPTIMUM_REQUIREMENTS = BENCH_DIR / "requirements-optimum.txt"
OPTIMUM_SCRIPT = BENCH_DIR / "optimum_quantize.py"
# the targets the headline prints PASS/FAIL for
TARGET_SPEEDUP = 2.0  # ours >= 2x the original's end-to-end throughput at batch 32
TARGET_GOLD_DROP = 0.003  # ours' gold Spearman no more than 0.003 below the original's

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
OPTIMUM_PEER = "optimum-ort-dynamic"  # Optimum's ORTQuantizer, exported in bench/.venv-optimum


OURS_SOURCE = "flowstone.baking.onnx.recipe.recommended_recipe()"


def ours_recipe() -> dict[str, Any]:
    """The recipe that is "ours": what ``recipe: auto`` chooses for MiniLM on this host
    (``flowstone.baking.pipeline.host_recipe()``: the search's cached choice, else a search
    of up to its default budget, in BAKE_BENCH_WORKDIR or the bake workspace), or with
    BAKE_BENCH_OURS=recommended the shipped recipe. Sets OURS_SOURCE."""
    global OURS_SOURCE
    if os.environ.get("BAKE_BENCH_OURS", "search") == "recommended":
        return recommended_recipe()
    from flowstone.baking.pipeline import host_recipe

    workdir = os.environ.get("BAKE_BENCH_WORKDIR")
    started = time.perf_counter()
    chosen = host_recipe(Path(workdir) / "host_recipe" if workdir else None, log=print)
    OURS_SOURCE = (
        f"flowstone.baking.pipeline.host_recipe() ({time.perf_counter() - started:.0f} s, "
        f"{'cached' if chosen.from_cache else 'searched now'})"
    )
    return {"name": chosen.name, "steps": list(chosen.steps)}


def recommended_name() -> str:
    """Register our recipe (ours_recipe()), read step by step as the pass runner would."""
    recipe = ours_recipe()
    base, steps = "export", []
    for step in recipe["steps"]:
        if "step" in step:  # recommended_recipe() / candidate_recipes(): {"step", "options"}
            kind, options = step["step"], dict(step.get("options", {}))
        else:  # a RecipeRecord's pass specs: {"name": "onnx_quantize", **options}
            kind = str(step.get("name", "")).removeprefix("onnx_")
            options = {k: v for k, v in step.items() if k != "name"}
        if kind == "optimize":
            base = "fused"
        elif kind == "quantize":
            steps.append(options)
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
    from flowstone.encoder import model_path
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


# --------------------------------------------------------------------------- host, gold set


def cpu_description() -> dict[str, Any]:
    """The CPU model and the flags that decide the int8 kernels (from /proc/cpuinfo)."""
    model, flags = "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.split()
    except OSError:
        pass
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")
    wanted += ("avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16")
    return {
        "model": model,
        "flags": [f for f in wanted if f in flags],
        "cpus": os.cpu_count(),
        "isa": "avx512_vnni" if "avx512_vnni" in flags else "avx2",
    }


def load_gold(path: Path) -> tuple[list[str], list[tuple[int, int]], list[float]]:
    """The gold STS pairs: (unique texts, [(i, j)], [score 0-5]), one JSON object a line with
    "id", "a", "b", "score"."""
    texts: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    scores: list[float] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            a, b, score = str(row["a"]), str(row["b"]), float(row["score"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SystemExit(f"{path}:{number}: not a gold pair ({exc!r})") from exc
        pairs.append((texts.setdefault(a, len(texts)), texts.setdefault(b, len(texts))))
        scores.append(score)
    if len(pairs) < 10:
        raise SystemExit(f"{path}: {len(pairs)} pairs, too few for a Spearman rho")
    return list(texts), pairs, scores


def gold_cosines(embeddings: Any, pairs: list[tuple[int, int]]) -> Any:
    """Each gold pair's cosine (float64)."""
    import numpy as np

    emb = np.asarray(embeddings, dtype=np.float64)
    emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    left, right = zip(*pairs, strict=True)
    return (emb[list(left)] * emb[list(right)]).sum(axis=1)


def gold_differences_ci(
    cosines: dict[str, Any], scores: list[float], resamples: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% paired-bootstrap intervals (pairs resampled, the same resample for every side) of
    each side's gold Spearman drop vs fp32 and of ours minus Optimum's rho: how far apart two
    sides' figures are beyond the choice of pairs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    gold = np.asarray(scores, dtype=np.float64)
    diffs: dict[str, list[float]] = {f"drop:{side}": [] for side in cosines if side != "fp32"}
    if {"ours", "optimum"} <= set(cosines):
        diffs["ours-optimum"] = []
    for _ in range(resamples):
        pick = rng.integers(0, len(gold), len(gold))
        rho = {side: spearman_rho(cos[pick], gold[pick]) for side, cos in cosines.items()}
        for key in diffs:
            left, right = ("fp32", key[5:]) if key.startswith("drop:") else ("ours", "optimum")
            diffs[key].append(rho[left] - rho[right])
    return {
        key: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
        for key, v in diffs.items()
    }


# --------------------------------------------------------------------------- the Optimum peer


def optimum_python() -> tuple[Path, float]:
    """The peer venv's python, building bench/.venv-optimum from bench/requirements-optimum.txt
    when it is missing or the requirements changed. Returns (python, seconds spent building)."""
    python = OPTIMUM_VENV / "bin" / "python"
    digest = hashlib.sha256(OPTIMUM_REQUIREMENTS.read_bytes()).hexdigest()
    stamp = OPTIMUM_VENV / ".requirements.sha256"
    if python.exists() and stamp.is_file() and stamp.read_text().strip() == digest:
        return python, 0.0
    print(
        f"building {OPTIMUM_VENV.relative_to(REPO)} from {OPTIMUM_REQUIREMENTS.name} ...",
        flush=True,
    )
    start = time.perf_counter()
    if OPTIMUM_VENV.exists():
        import shutil

        shutil.rmtree(OPTIMUM_VENV)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(OPTIMUM_VENV)], check=True)
    log = OPTIMUM_VENV / "install.log"
    with log.open("w") as out:
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--no-input", "-r", str(OPTIMUM_REQUIREMENTS)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(
            f"pip install -r {OPTIMUM_REQUIREMENTS.name} failed (see {log}):\n{tail}"
        )
    stamp.write_text(digest + "\n")
    return python, time.perf_counter() - start


def optimum_model(model_dir: Path, work: Path, isa: str) -> tuple[Path, dict[str, Any]]:
    """Optimum's quantized model of ``model_dir``: exported and quantized by
    bench/optimum_quantize.py in the peer venv. Returns (model_quantized.onnx, its report)."""
    python, venv_s = optimum_python()
    out = work / "optimum"
    record = out / "optimum.json"
    model = out / "model_quantized.onnx"
    if model.is_file() and record.is_file():
        info = json.loads(record.read_text())
        if info.get("isa") == isa:  # kept from an earlier run (BAKE_BENCH_WORKDIR)
            return model, {**info, "venv_build_s": round(venv_s, 1), "model_reused": True}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # nothing of the project's venv leaks into the peer
    start = time.perf_counter()
    done = subprocess.run(
        [str(python), str(OPTIMUM_SCRIPT), str(model_dir), str(out), "--isa", isa],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("OPTIMUM_JSON ")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"{OPTIMUM_SCRIPT.name} failed (exit {done.returncode}):\n{tail}")
    info = json.loads(lines[-1].removeprefix("OPTIMUM_JSON "))
    info["subprocess_s"] = round(time.perf_counter() - start, 1)
    record.write_text(json.dumps(info) + "\n")
    if "last_hidden_state" not in info["outputs"]:  # what OnnxEmbedder reads
        raise RuntimeError(f"{model}: outputs {info['outputs']}, no last_hidden_state")
    unknown = set(info["inputs"]) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise RuntimeError(f"{model}: inputs {sorted(unknown)} that OnnxEmbedder does not feed")
    return model, {**info, "venv_build_s": round(venv_s, 1), "model_reused": False}


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

    from flowstone.encoder import model_path

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    passes = int(os.environ.get("BAKE_BENCH_PASSES", "5"))
    curve_passes = max(1, passes - 2)
    budget = float(os.environ.get("BAKE_BENCH_BUDGET_S", "270"))
    with_optimum = os.environ.get("BAKE_BENCH_OPTIMUM", "1") != "0"
    gold_path = Path(os.environ.get("BAKE_BENCH_GOLD") or GOLD_STS)
    names, recommended = select_recipes()
    cpu = cpu_description()
    model_dir = model_path()
    texts, pairs = load_fidelity_pairs()
    load_start = os.getloadavg()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in load_start)}")
    print(f"ours: {recommended} (from {OURS_SOURCE})")
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

    # the Optimum peer: exported and quantized in its own venv, run here by the same runner
    optimum_info: dict[str, Any] = {}
    optimum_path: Path | None = None
    if with_optimum:
        start = time.perf_counter()
        try:
            optimum_path, optimum_info = optimum_model(model_dir, work, cpu["isa"])
        except Exception as exc:  # noqa: BLE001 - report it, bench the rest
            optimum_info = {"error": str(exc)}
            print(f"Optimum peer unavailable: {exc}")
        else:
            # a first-use venv build is setup, not measurement: it does not eat the budget
            started += optimum_info["venv_build_s"]
            versions = ", ".join(f"{k} {v}" for k, v in optimum_info["versions"].items())
            config = optimum_info["config"]
            print(
                f"Optimum peer in {time.perf_counter() - start:.1f} s (venv build "
                f"{optimum_info['venv_build_s']:.1f} s, export {optimum_info['export_s']:.1f} s, "
                f"quantize {optimum_info['quantize_s']:.1f} s"
                f"{', reused' if optimum_info['model_reused'] else ''}): "
                f"AutoQuantizationConfig.{optimum_info['isa']}(is_static=False) -> "
                f"per_channel={config['per_channel']}, reduce_range={config['reduce_range']}, "
                f"operators {config['operators_to_quantize']}; peer venv: {versions}"
            )
            names.append(OPTIMUM_PEER)

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
            path = optimum_path if name == OPTIMUM_PEER else build_recipe(name, work, bases)
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

    # fidelity to human judgement: pair cosines against the gold STS scores
    gold: dict[str, float] = {}
    gold_ci: dict[str, tuple[float, float]] = {}
    gold_pairs = 0
    if gold_path.is_file():
        start = time.perf_counter()
        gold_texts, gold_index, gold_scores = load_gold(gold_path)
        gold_pairs = len(gold_index)
        sides = {"fp32": encoders["original"], "ours": encoders[recommended]}
        if OPTIMUM_PEER in encoders:
            sides["optimum"] = encoders[OPTIMUM_PEER]
        cosines = {side: gold_cosines(enc(gold_texts), gold_index) for side, enc in sides.items()}
        gold = {side: spearman_rho(cos, gold_scores) for side, cos in cosines.items()}
        gold_ci = gold_differences_ci(cosines, gold_scores)
        print(
            f"gold STS: {gold_pairs} pairs, {len(gold_texts)} texts from {gold_path} "
            f"({time.perf_counter() - start:.1f} s)"
        )
    else:
        print(f"gold STS set {gold_path} not found: gold fidelity and its targets skipped")

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
        fns, len(blocks), curve_passes, deadline=started + 0.6 * budget, min_passes=2
    )
    speed = ratios(totals, "original")

    # headline: ours and the Optimum peer against the original, end to end and model only
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
    peer = embedders.get(OPTIMUM_PEER)
    if peer is not None:  # same tokenizer as ours (the model folder's), so no tokenize side
        head["optimum e2e"] = fns[OPTIMUM_PEER]
        head["optimum model-only"] = lambda b: [peer.embed_tokens(f) for f in ort_features[b]]
    print(
        f"\nheadline timing ({recommended}{' and Optimum' if peer else ''} vs original only), "
        f"{passes} rounds"
    )
    load_head = os.getloadavg()
    head_totals = interleaved(
        head, len(blocks), passes, seed=1, deadline=started + budget, min_passes=3
    )
    load_end = os.getloadavg()

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
    print("(rho kind: the lowest Spearman rho within one kind of pair; * ours)")
    med = {name: statistics.median(runs) for name, runs in head_totals.items()}
    e2e = ratios(head_totals, "original e2e")["baked e2e"]
    model_only = ratios(head_totals, "original model-only")["baked model-only"]
    row = rows[recommended]
    print(f"\n== ours: {recommended} ==")
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

    figures = headline(
        head_totals,
        n=n,
        cpu=cpu,
        threads=threads,
        ort_threads=embedder.threads,
        loads={"start": load_start, "headline": load_head, "end": load_end},
        gold=gold,
        gold_ci=gold_ci,
        gold_pairs=gold_pairs,
        gold_path=gold_path,
        recommended=recommended,
        rows=rows,
        sizes=sizes,
        optimum_info=optimum_info,
    )
    total_s = time.perf_counter() - started
    print(
        f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"on {os.cpu_count()} CPUs; total {total_s:.0f} s"
        + (
            f" (+ {optimum_info['venv_build_s']:.0f} s building the peer venv)"
            if optimum_info.get("venv_build_s")
            else ""
        )
    )
    figures["total_s"] = round(total_s, 1)
    print("BENCH_JSON " + json.dumps(figures), flush=True)
    if tmp is not None:
        tmp.cleanup()


def spread(values: list[float]) -> dict[str, Any]:
    """Median and min-max of per-round figures."""
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "rounds": [round(v, 4) for v in values],
    }


OPTIMUM_JSON_KEYS = ("isa", "config", "versions", "venv_build_s", "export_s", "quantize_s")
OPTIMUM_JSON_KEYS += ("quantized_mb", "model_reused", "error")


def verdict(ok: bool | None) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "FAIL")


def headline(
    head_totals: dict[str, list[float]],
    *,
    n: int,
    cpu: dict[str, Any],
    threads: int,
    ort_threads: int,
    loads: dict[str, tuple[float, float, float]],
    gold: dict[str, float],
    gold_ci: dict[str, tuple[float, float]],
    gold_pairs: int,
    gold_path: Path,
    recommended: str,
    rows: dict[str, FidelityReport],
    sizes: dict[str, float | None],
    optimum_info: dict[str, Any],
) -> dict[str, Any]:
    """Print the headline (fp32 vs ours vs Optimum, end to end at batch 32, gold fidelity,
    targets) and return its figures for BENCH_JSON."""
    sides = {"fp32": "original e2e", "ours": "baked e2e"}
    if "optimum e2e" in head_totals:
        sides["optimum"] = "optimum e2e"
    rounds = len(head_totals["original e2e"])
    to_fp32 = {
        side: spread(ratios(head_totals, "original e2e")[key]) for side, key in sides.items()
    }
    throughput = {
        side: round(n / statistics.median(head_totals[key]), 1) for side, key in sides.items()
    }
    # Optimum's time / ours within a round: > 1 means ours is faster
    ours_vs_optimum = (
        spread(ratios(head_totals, "optimum e2e")["baked e2e"]) if "optimum" in sides else None
    )
    model_only = {
        side: spread(ratios(head_totals, "original model-only")[f"{key} model-only"])
        for side, key in (("ours", "baked"), ("optimum", "optimum"))
        if f"{key} model-only" in head_totals
    }
    fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    print(
        f"\n== headline: MiniLM end to end at batch {BATCH} ==\n"
        f"host       : {cpu['model']}, {cpu['cpus']} CPUs, flags {' '.join(cpu['flags'])}; "
        f"threads: torch {threads}, ORT intra-op {ort_threads} (inter-op 1); load average "
        f"{fmt(loads['start'])} at start, {fmt(loads['headline'])} before the headline rounds, "
        f"{fmt(loads['end'])} after"
    )
    print(
        f"timing     : {rounds} rounds over the same {n} texts, each round every block of "
        f"{4 * BATCH} texts run by every side in a new shuffled order; ratio = fp32 time / side "
        f"time within a round; median (min-max over rounds)"
    )
    labels = {
        "fp32": "(a) fp32 SentenceTransformer.encode",
        "ours": f"(b) ours: {recommended}",
        "optimum": f"(c) Optimum ORTQuantizer {optimum_info.get('isa', '')} dynamic",
    }
    print(f"{'side':62s} {'texts/s':>8s} {'vs fp32':>8s} {'min-max':>12s} {'model-only':>10s}")
    for side in sides:
        r = to_fp32[side]
        mo = f"{model_only[side]['median']:9.2f}x" if side in model_only else f"{'':10s}"
        print(
            f"{labels[side]:62s} {throughput[side]:8.1f} {r['median']:7.2f}x "
            f"{r['min']:5.2f}-{r['max']:5.2f}x {mo}"
        )
    if ours_vs_optimum:
        print(
            f"ours' throughput / Optimum's: {ours_vs_optimum['median']:.2f}x "
            f"({ours_vs_optimum['min']:.2f}-{ours_vs_optimum['max']:.2f}x over rounds: "
            f"{', '.join(f'{r:.2f}' for r in ours_vs_optimum['rounds'])})"
        )
    elif optimum_info.get("error"):
        print(f"Optimum peer: not run ({optimum_info['error'].splitlines()[0]})")

    drop = {side: gold["fp32"] - rho for side, rho in gold.items()}
    if gold:
        print(
            f"gold STS   : Spearman of pair cosines vs gold scores, {gold_pairs} pairs ({gold_path.name})"
        )
        for side, rho in gold.items():
            extra = ""
            if side != "fp32":
                held = rows[recommended if side == "ours" else OPTIMUM_PEER].spearman_rho
                lo, hi = gold_ci[f"drop:{side}"]
                extra = (
                    f", drop vs fp32 {drop[side]:+.4f} (95% CI {lo:+.4f}..{hi:+.4f}); "
                    f"held-out rho vs fp32 {held:.5f}"
                )
            print(f"  {labels[side]:60s} {rho:.4f}{extra}")
        if "ours-optimum" in gold_ci:
            lo, hi = gold_ci["ours-optimum"]
            print(
                f"  ours - Optimum gold rho {gold['ours'] - gold['optimum']:+.4f} "
                f"(95% CI {lo:+.4f}..{hi:+.4f}; paired bootstrap over pairs, 1000 resamples)"
            )

    ours_speed = to_fp32["ours"]["median"]
    target_speed = ours_speed >= TARGET_SPEEDUP
    target_gold = drop["ours"] <= TARGET_GOLD_DROP if gold else None
    target_peer: bool | None = None
    # Equal or better fidelity: ours' gold rho is not significantly below Optimum's (the upper
    # end of the paired 95% interval of ours - Optimum is >= 0). A point difference smaller
    # than the interval's width says nothing about which model keeps more of the task.
    fidelity_ok: bool | None = None
    if "ours-optimum" in gold_ci:
        fidelity_ok = gold_ci["ours-optimum"][1] >= 0.0
    if ours_vs_optimum and fidelity_ok is not None:
        target_peer = ours_vs_optimum["median"] >= 1.0 and fidelity_ok
    print("targets    :")
    print(
        f"  [{verdict(target_speed)}] ours >= {TARGET_SPEEDUP:g}x fp32 at batch {BATCH}: "
        f"{ours_speed:.2f}x (min {to_fp32['ours']['min']:.2f}x)"
    )
    print(
        f"  [{verdict(target_gold)}] ours' gold Spearman within {TARGET_GOLD_DROP} of fp32: "
        + (f"drop {drop['ours']:+.4f}" if gold else "no gold set")
    )
    if target_peer is None:
        why = "no Optimum peer" if not ours_vs_optimum else "no gold set"
        print(f"  [n/a ] ours' throughput >= Optimum's at equal or better fidelity: {why}")
    else:
        print(
            f"  [{verdict(target_peer)}] ours' throughput >= Optimum's at equal or better "
            f"fidelity: {ours_vs_optimum['median']:.2f}x Optimum's throughput "
            f"(min {ours_vs_optimum['min']:.2f}x); gold drop ours {drop['ours']:+.4f} vs "
            f"Optimum {drop['optimum']:+.4f}, ours - Optimum 95% CI "
            f"{gold_ci['ours-optimum'][0]:+.4f}..{gold_ci['ours-optimum'][1]:+.4f} "
            f"({'not below' if fidelity_ok else 'below'} Optimum's at 95%)"
        )
    return {
        "bench": "baking_minilm",
        "host": {
            "cpu": cpu["model"],
            "flags": cpu["flags"],
            "cpus": cpu["cpus"],
            "torch_threads": threads,
            "ort_intra_op_threads": ort_threads,
            "loadavg": {k: [round(x, 2) for x in v] for k, v in loads.items()},
        },
        "batch": BATCH,
        "texts": n,
        "rounds": rounds,
        "ours": {"recipe": recommended, "source": OURS_SOURCE, "size_mb": sizes[recommended]},
        "texts_per_s": throughput,
        "ratio_to_fp32": to_fp32,
        "model_only_ratio_to_fp32": model_only,
        "ours_vs_optimum": ours_vs_optimum,
        "gold": {
            "path": str(gold_path),
            "pairs": gold_pairs,
            "spearman": {k: round(v, 5) for k, v in gold.items()},
            "drop_vs_fp32": {k: round(v, 5) for k, v in drop.items() if k != "fp32"},
            "ci95": {k: [round(lo, 5), round(hi, 5)] for k, (lo, hi) in gold_ci.items()},
        }
        if gold
        else None,
        "heldout_rho_vs_fp32": {
            side: round(rows[name].spearman_rho, 5)
            for side, name in (("ours", recommended), ("optimum", OPTIMUM_PEER))
            if name in rows
        },
        "targets": {
            "ours_speedup_ge_2x": target_speed,
            "ours_gold_drop_le_0.003": target_gold,
            "ours_ge_optimum_at_equal_or_better_fidelity": target_peer,
        },
        "optimum": {k: v for k, v in optimum_info.items() if k in OPTIMUM_JSON_KEYS},
    }


def st_encoder(model: Any) -> Any:
    """SentenceTransformer.encode at batch 32 with its defaults (sorted by length, normalised by
    the model's Normalize module, numpy out)."""
    return lambda texts: model.encode(texts, batch_size=BATCH, show_progress_bar=False)


def main_sensitivity() -> None:
    """On the plain exported graph the recipe quantises: for each weight MatMul, quantise all
    but that one (dynamic, per channel) and see how much cosine fidelity comes back."""
    import onnx
    from sentence_transformers import SentenceTransformer

    from flowstone.encoder import model_path

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
