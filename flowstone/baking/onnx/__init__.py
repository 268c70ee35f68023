"""ONNX Runtime steps for sentence-transformers embedding models, one module per seam.

Why this exists: the bake line needs a runtime that beats ``SentenceTransformer.encode`` on CPU
without moving the similarity ranking. Torch dynamic int8 (``quantize_dynamic``, fbgemm) quantises
activations to 7 bits (``reduce_range``), which on all-MiniLM-L6-v2 costs mean cosine 0.977 even
with per-channel weights; ONNX Runtime's dynamic int8 uses the full 8 bits on VNNI CPUs and
holds 0.993-0.995 at a higher speed. The steps are plain functions (export -> optimise ->
quantise -> run) that the bake passes call one at a time, so each step's output can be
checkpointed:

* ``model_folder``: what a sentence-transformers folder says about pooling and normalisation.
* ``graph``: reading ONNX files and the pooling record kept in their metadata.
* ``export``: the transformer to ONNX, checked against torch.
* ``optimize``: ONNX Runtime's BERT fusions.
* ``quantize``: dynamic int8 and block-wise MatMulNBits, with per-node exclusions.
* ``runtime``: :class:`~flowstone.baking.onnx.runtime.OnnxEmbedder`, encode like the original.
* ``recipe``: the recipe bench/bench_baking_minilm.py settled on.

The fidelity math (cosine, Spearman rho of pair similarities) is not ONNX-specific: it lives in
``flowstone.baking.fidelity``, shared by the product's quality step and the bench.

Heavy libraries (torch, transformers, onnx, onnxruntime) are imported inside functions: importing
these modules must stay cheap because the Dagster code location imports the baking package.
"""
